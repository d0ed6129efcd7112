/**
 * Mask logits -> masks of the image's size, as the reference post-processing does (docs/reference.md
 * section 8): bilinear interpolation with PyTorch's `align_corners=False` arithmetic (no antialiasing),
 * threshold at logit 0. SAM 2.1: logits straight to the image size. SAM 1: to the padded input frame,
 * crop the image's part, then to the image size.
 */
import type { Mask } from "../vision/types.js";
import type { SamFrame, SegmenterConfig } from "./types.js";

/** Per output index: the two source indices and the weight of the second (PyTorch's source index rule). */
function axisTaps(inSize: number, outSize: number): { i0: Int32Array; i1: Int32Array; w1: Float32Array } {
  const i0 = new Int32Array(outSize);
  const i1 = new Int32Array(outSize);
  const w1 = new Float32Array(outSize);
  const scale = inSize / outSize;
  for (let o = 0; o < outSize; o++) {
    const src = Math.max((o + 0.5) * scale - 0.5, 0);
    const lo = Math.min(Math.floor(src), inSize - 1);
    i0[o] = lo;
    i1[o] = Math.min(lo + 1, inSize - 1);
    w1[o] = src - lo;
  }
  return { i0, i1, w1 };
}

/**
 * `F.interpolate(x, size=(outH, outW), mode="bilinear", align_corners=False)` of one plane given as a
 * window (left, top, width, height) of a row-major `stride`-wide array.
 */
export function resizeBilinear(
  src: Float32Array,
  stride: number,
  window: { left: number; top: number; width: number; height: number },
  outWidth: number,
  outHeight: number,
): Float32Array {
  const xs = axisTaps(window.width, outWidth);
  const ys = axisTaps(window.height, outHeight);
  const out = new Float32Array(outWidth * outHeight);
  const base = window.top * stride + window.left;
  for (let oy = 0; oy < outHeight; oy++) {
    const r0 = base + ys.i0[oy] * stride;
    const r1 = base + ys.i1[oy] * stride;
    const wy = ys.w1[oy];
    for (let ox = 0; ox < outWidth; ox++) {
      const a = xs.i0[ox];
      const b = xs.i1[ox];
      const wx = xs.w1[ox];
      const top = src[r0 + a] * (1 - wx) + src[r0 + b] * wx;
      const bottom = src[r1 + a] * (1 - wx) + src[r1 + b] * wx;
      out[oy * outWidth + ox] = top * (1 - wy) + bottom * wy;
    }
  }
  return out;
}

/** One mask's logits [M, M] -> logits of the image's size. */
export function logitsToImage(
  logits: Float32Array,
  frame: SamFrame,
  config: Pick<SegmenterConfig, "maskSize" | "resize">,
): Float32Array {
  const M = config.maskSize;
  const full = { left: 0, top: 0, width: M, height: M };
  if (config.resize === "stretch") return resizeBilinear(logits, M, full, frame.width, frame.height);
  const S = frame.inputSize;
  const padded = resizeBilinear(logits, M, full, S, S);
  return resizeBilinear(
    padded,
    S,
    { left: 0, top: 0, width: frame.resizedWidth, height: frame.resizedHeight },
    frame.width,
    frame.height,
  );
}

/** Logits of the image's size -> a 0/1 mask (logit > 0 is inside) and its area. */
export function thresholdLogits(
  logits: Float32Array,
  width: number,
  height: number,
): { mask: Mask; area: number } {
  const data = new Uint8Array(width * height);
  let area = 0;
  for (let i = 0; i < data.length; i++) {
    if (logits[i] > 0) {
      data[i] = 1;
      area++;
    }
  }
  return { mask: { width, height, data }, area };
}
