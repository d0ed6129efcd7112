/**
 * PyTorch's `F.interpolate(mode="bilinear", align_corners=False)` (no antialiasing) of one float
 * plane, as SAM's reference post-processing upsamples mask logits (docs/reference.md section 8): the
 * scale in float32, the source index from it in double precision, weights stored as float32, the
 * blend in double precision. Values are within 5e-7 of PyTorch's (which blends in float32 in an order
 * of its own), so thresholded masks agree except where a logit is that close to 0.
 */

export interface BilinearTaps {
  i0: Int32Array;
  i1: Int32Array;
  w1: Float32Array;
}

/**
 * Per output index: the two source indices and the weight of the second (PyTorch's source index rule).
 * The native kernel (native/imaging.cc) takes these as they are.
 */
export function bilinearTaps(inSize: number, outSize: number): BilinearTaps {
  const i0 = new Int32Array(outSize);
  const i1 = new Int32Array(outSize);
  const w1 = new Float32Array(outSize);
  // PyTorch computes the scale in float32 (area_pixel_compute_scale<float>) and the source index from
  // it in double precision; a double-precision scale moves the weights by up to 7e-5.
  const scale = Math.fround(inSize / outSize);
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
  const xs = bilinearTaps(window.width, outWidth);
  const ys = bilinearTaps(window.height, outHeight);
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
