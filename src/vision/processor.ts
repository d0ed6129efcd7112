/**
 * `LlavaImageProcessor`: LLaVA-1.5's preprocessing (`preprocessImageForLlava` and
 * `llavaAlphaFromMask` in preprocess.ts are its specification) as jobs of an `ImagingPool`, so that
 * a 12-megapixel photo is padded, resized and normalised off the event loop, with its rows split
 * across threads. The pad to a square is virtual: nothing of the square's size is ever built.
 */
import { resample, toPlanes, type Canvas } from "../common/imaging/kernels.js";
import { ImagingPool } from "../common/imaging/pool.js";
import type { Tensor } from "../common/tensor.js";
import {
  alphaFromResizedMask,
  checkImage,
  checkMaskData,
  checkSize,
  clipNormalizationLut,
  LLAVA_ALPHA_BACKGROUND,
  LLAVA_ALPHA_FOREGROUND,
  LLAVA_MASK_SUM_THRESHOLD,
  LLAVA_PAD_COLOR,
} from "./preprocess.js";
import type { Mask, RgbImage } from "./types.js";

/** expand2square's canvas: the image centred on a square of the pad colour (none when square). */
function squareCanvas(width: number, height: number): Canvas | undefined {
  if (width === height) return undefined;
  const s = Math.max(width, height);
  return {
    width: s,
    height: s,
    left: Math.floor((s - width) / 2),
    top: Math.floor((s - height) / 2),
    color: LLAVA_PAD_COLOR,
  };
}

export interface LlavaRegionAlpha {
  /** [R * R]: +1.9231 inside the region, -1.9231 outside (padding counts as outside). */
  alpha: Float32Array;
  /** [R * R]: 1 where alpha is foreground. */
  foreground: Uint8Array;
  /** The padded + resized mask image, HWC [R, R, 3] (absent for the whole image). */
  maskResized?: Uint8Array;
}

export class LlavaImageProcessor {
  constructor(
    /** The encoder's input resolution R. */
    readonly size: number,
    private readonly pool: ImagingPool = ImagingPool.shared(),
  ) {
    checkSize(size);
  }

  /** The image half: [1, 3, R, R] normalised pixels, and the padded + resized image (HWC [R, R, 3]). */
  async image(image: RgbImage): Promise<{ pixelValues: Tensor; resized: Uint8Array }> {
    checkImage(image);
    const R = this.size;
    const resized = await resample(this.pool, {
      src: image.data,
      kind: "rgb",
      width: image.width,
      height: image.height,
      canvas: squareCanvas(image.width, image.height),
      outWidth: R,
      outHeight: R,
      filter: "bicubic",
    });
    const data = await toPlanes(this.pool, resized, R, R, clipNormalizationLut(), R);
    return { pixelValues: { data, shape: [1, 3, R, R] }, resized };
  }

  /**
   * One region's alpha: the mask goes through the image's geometry as a white-on-black RGB image,
   * and the sum of its normalised channels above 6 is foreground. `null` = the whole image
   * (foreground everywhere, padding included: the reference's no-mask path).
   */
  async alpha(mask: Mask | null): Promise<LlavaRegionAlpha> {
    const R = this.size;
    const plane = R * R;
    if (!mask) {
      return {
        alpha: new Float32Array(plane).fill(LLAVA_ALPHA_FOREGROUND),
        foreground: new Uint8Array(plane).fill(1),
      };
    }
    const spec = {
      src: mask.data,
      kind: "mask" as const,
      width: mask.width,
      height: mask.height,
      canvas: squareCanvas(mask.width, mask.height),
      outWidth: R,
      outHeight: R,
      filter: "bicubic" as const,
    };
    checkMaskData(mask);
    const maskResized = await resample(this.pool, spec);
    const lut = clipNormalizationLut();
    const alpha = new Float32Array(plane);
    const foreground = new Uint8Array(plane);
    await this.pool.run(
      (addon) =>
        addon.llavaAlpha({
          src: maskResized,
          lut,
          threshold: LLAVA_MASK_SUM_THRESHOLD,
          inside: LLAVA_ALPHA_FOREGROUND,
          outside: LLAVA_ALPHA_BACKGROUND,
          alpha,
          foreground,
        }),
      () => alphaFromResizedMask(maskResized, alpha, foreground),
    );
    return { alpha, foreground, maskResized };
  }

  /** Several regions' alphas as one [N, 1, R, R] tensor (`null` = the whole image). */
  async alphas(masks: Array<Mask | null>): Promise<Tensor> {
    const R = this.size;
    const plane = R * R;
    const data = new Float32Array(masks.length * plane);
    const each = await Promise.all(masks.map((m) => this.alpha(m)));
    each.forEach((a, i) => data.set(a.alpha, i * plane));
    return { data, shape: [masks.length, 1, R, R] };
  }
}
