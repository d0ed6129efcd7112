/**
 * `SamProcessor`: SAM's preprocessing and mask post-processing (`preprocessForSam` in preprocess.ts
 * and `logitsToImage` + `thresholdLogits` in postprocess.ts are its specification) as jobs of an
 * `ImagingPool`: off the event loop, rows split across threads for large images, and the
 * full-resolution logits never stored (the last resize writes the thresholded mask directly).
 */
import { bilinearMask, bilinearResize, resample, toPlanes } from "../common/imaging/kernels.js";
import { ImagingPool } from "../common/imaging/pool.js";
import type { Tensor } from "../common/tensor.js";
import { knownMask } from "../vision/region.js";
import type { Mask, RgbImage } from "../vision/types.js";
import { samFrame } from "./preprocess.js";
import type { SamFrame, SegmenterConfig } from "./types.js";

/** (level / 255 - mean) / std per channel, in double precision stored as float32 ([3 * 256]). */
export function samNormalizationLut(config: Pick<SegmenterConfig, "mean" | "std">): Float32Array {
  const lut = new Float32Array(3 * 256);
  for (let c = 0; c < 3; c++) {
    const invStd = 1 / config.std[c];
    for (let v = 0; v < 256; v++) lut[c * 256 + v] = (v / 255 - config.mean[c]) * invStd;
  }
  return lut;
}

export class SamProcessor {
  private readonly lut: Float32Array;

  constructor(
    readonly config: SegmenterConfig,
    private readonly pool: ImagingPool = ImagingPool.shared(),
  ) {
    this.lut = samNormalizationLut(config);
  }

  /** RGB image -> `pixel_values` [1, 3, S, S] and the frame it was mapped into. */
  async image(image: RgbImage): Promise<{ pixelValues: Tensor; frame: SamFrame }> {
    const frame = samFrame(image.width, image.height, this.config);
    const { resizedWidth: w, resizedHeight: h, inputSize: S } = frame;
    const resized = await resample(this.pool, {
      src: image.data,
      kind: "rgb",
      width: image.width,
      height: image.height,
      outWidth: w,
      outHeight: h,
      filter: "bilinear",
    });
    // Zero outside the resized image is the padding value (SAM 1); stretched frames have none.
    const data = await toPlanes(this.pool, resized, w, h, this.lut, S);
    return { pixelValues: { data, shape: [1, 3, S, S] }, frame };
  }

  /** One mask's logits [M, M] -> its 0/1 mask at the image's size (logit > 0 inside) and its area. */
  async mask(logits: Float32Array, frame: SamFrame): Promise<{ mask: Mask; area: number }> {
    const M = this.config.maskSize;
    const { width, height } = frame;
    let result: { data: Uint8Array; area: number };
    if (this.config.resize === "stretch") {
      result = await bilinearMask(this.pool, { src: logits, stride: M, rows: M }, width, height);
    } else {
      // SAM 1: to the padded input frame, then the image's part of it to the image's size.
      const S = frame.inputSize;
      const padded = await bilinearResize(this.pool, { src: logits, stride: M, rows: M }, S, S);
      result = await bilinearMask(
        this.pool,
        {
          src: padded,
          stride: S,
          rows: S,
          window: { left: 0, top: 0, width: frame.resizedWidth, height: frame.resizedHeight },
        },
        width,
        height,
      );
    }
    return { mask: knownMask({ width, height, data: result.data }, result.area), area: result.area };
  }
}
