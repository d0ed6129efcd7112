/**
 * Pillow's 8-bit BICUBIC and BILINEAR resizes (Pillow 9.x `Resample.c`), reproduced bit for bit
 * (docs/reference.md section 2; BILINEAR is what SAM's processors use, section 8).
 *
 * The reference pipelines (LLaVA's CLIP image processor, Alpha-CLIP's torchvision transform) resize
 * with Pillow; sharp/libvips compute a different bicubic (tens of levels apart), so exact features
 * need this exact algorithm: separable (horizontal pass first, then vertical, each only when that
 * dimension changes), cubic kernel a = -0.5 with its support widened by the downscale factor, weights
 * normalised in double precision and converted to fixed point with 22 fractional bits (round half away
 * from zero), an 8-bit intermediate image, and clamping to 0..255 after each pass.
 */

const PRECISION_BITS = 22;
const ROUNDING_OFFSET = 1 << (PRECISION_BITS - 1);
const FIXED_ONE = 1 << PRECISION_BITS;

/** A resampling filter: its kernel and the kernel's support (half-width) at scale 1. */
interface ResampleFilter {
  support: number;
  kernel(x: number): number;
}

function bicubicFilter(xIn: number): number {
  const a = -0.5;
  const x = xIn < 0 ? -xIn : xIn;
  if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
  return 0;
}

function bilinearFilter(xIn: number): number {
  const x = xIn < 0 ? -xIn : xIn;
  return x < 1 ? 1 - x : 0;
}

const FILTERS = {
  bicubic: { support: 2, kernel: bicubicFilter },
  bilinear: { support: 1, kernel: bilinearFilter },
} satisfies Record<string, ResampleFilter>;
export type PillowFilter = keyof typeof FILTERS;

/** Per output position: first input index, number of taps, fixed-point weights (`ksize` per output). */
export interface PillowCoefficients {
  ksize: number;
  start: Int32Array;
  count: Int32Array;
  weights: Int32Array;
}

/**
 * The fixed-point filter coefficients of one axis, as Pillow's `precompute_coeffs` and
 * `normalize_coeffs_8bpc` compute them. The native kernels (native/imaging.cc) take these as they are.
 */
export function pillowCoefficients(
  inSize: number,
  outSize: number,
  filterName: PillowFilter,
): PillowCoefficients {
  return precomputeCoefficients(inSize, outSize, FILTERS[filterName]);
}

function precomputeCoefficients(inSize: number, outSize: number, filter: ResampleFilter): PillowCoefficients {
  const scale = inSize / outSize;
  const filterScale = scale < 1 ? 1 : scale;
  const support = filter.support * filterScale;
  const ksize = Math.ceil(support) * 2 + 1;
  const start = new Int32Array(outSize);
  const count = new Int32Array(outSize);
  const weights = new Int32Array(outSize * ksize);
  const k = new Float64Array(ksize);
  const invFilterScale = 1 / filterScale;
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    // C's (int) cast truncates toward zero; negative values are clamped to 0 right after.
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let sum = 0;
    for (let x = 0; x < xmax; x++) {
      const w = filter.kernel((x + xmin - center + 0.5) * invFilterScale);
      k[x] = w;
      sum += w;
    }
    for (let x = 0; x < ksize; x++) {
      let w = x < xmax ? k[x] : 0;
      if (x < xmax && sum !== 0) w /= sum;
      // Round half away from zero, as Pillow's normalize_coeffs_8bpc does.
      weights[xx * ksize + x] = w < 0 ? Math.trunc(-0.5 + w * FIXED_ONE) : Math.trunc(0.5 + w * FIXED_ONE);
    }
    start[xx] = xmin;
    count[xx] = xmax;
  }
  return { ksize, start, count, weights };
}

function clip8(fixed: number): number {
  // `fixed` is an exact integer (well inside 2^53); floor division = C's arithmetic shift.
  const v = Math.floor(fixed / FIXED_ONE);
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

function resampleHorizontal(
  src: Uint8Array,
  width: number,
  channels: number,
  rowFirst: number,
  rowCount: number,
  outWidth: number,
  c: PillowCoefficients,
): Uint8Array {
  const out = new Uint8Array(outWidth * rowCount * channels);
  for (let y = 0; y < rowCount; y++) {
    const srcRow = (y + rowFirst) * width * channels;
    const dstRow = y * outWidth * channels;
    for (let xx = 0; xx < outWidth; xx++) {
      const xmin = c.start[xx];
      const n = c.count[xx];
      const kOff = xx * c.ksize;
      for (let ch = 0; ch < channels; ch++) {
        let ss = ROUNDING_OFFSET;
        for (let x = 0; x < n; x++) ss += src[srcRow + (x + xmin) * channels + ch] * c.weights[kOff + x];
        out[dstRow + xx * channels + ch] = clip8(ss);
      }
    }
  }
  return out;
}

function resampleVertical(
  src: Uint8Array,
  width: number,
  channels: number,
  rowShift: number,
  outHeight: number,
  c: PillowCoefficients,
): Uint8Array {
  const rowLen = width * channels;
  const out = new Uint8Array(rowLen * outHeight);
  // Accumulate whole rows tap by tap (sequential memory access); sums are exact integers in doubles.
  const acc = new Float64Array(rowLen);
  for (let yy = 0; yy < outHeight; yy++) {
    const ymin = c.start[yy] - rowShift;
    const n = c.count[yy];
    const kOff = yy * c.ksize;
    acc.fill(ROUNDING_OFFSET);
    for (let y = 0; y < n; y++) {
      const w = c.weights[kOff + y];
      const srcRow = (y + ymin) * rowLen;
      for (let i = 0; i < rowLen; i++) acc[i] += src[srcRow + i] * w;
    }
    const dstRow = yy * rowLen;
    for (let i = 0; i < rowLen; i++) out[dstRow + i] = clip8(acc[i]);
  }
  return out;
}

/**
 * Resize an 8-bit interleaved image (HWC, `channels` per pixel) to `outWidth` x `outHeight` exactly
 * as Pillow's `Image.resize(size, Image.BICUBIC)` does for "L"/"RGB" images.
 */
export function pillowResizeBicubic(
  src: Uint8Array,
  width: number,
  height: number,
  channels: number,
  outWidth: number,
  outHeight: number,
): Uint8Array {
  return pillowResize(src, width, height, channels, outWidth, outHeight, "bicubic");
}

/** `Image.resize(size, Image.BICUBIC | Image.BILINEAR)` on an 8-bit "L"/"RGB" image, bit for bit. */
export function pillowResize(
  src: Uint8Array,
  width: number,
  height: number,
  channels: number,
  outWidth: number,
  outHeight: number,
  filterName: PillowFilter,
): Uint8Array {
  const filter = FILTERS[filterName];
  for (const [name, v] of [
    ["width", width],
    ["height", height],
    ["outWidth", outWidth],
    ["outHeight", outHeight],
    ["channels", channels],
  ] as const) {
    if (!Number.isInteger(v) || v < 1)
      throw new RangeError(`pillowResize: ${name} must be a positive integer, got ${v}`);
  }
  if (src.length !== width * height * channels) {
    throw new RangeError(
      `pillowResize: expected ${width * height * channels} bytes for ${width}x${height}x${channels}, got ${src.length}`,
    );
  }
  const needHorizontal = outWidth !== width;
  const needVertical = outHeight !== height;
  if (!needHorizontal && !needVertical) return src.slice();

  const vert = precomputeCoefficients(height, outHeight, filter);
  let current = src;
  let rowShift = 0;
  if (needHorizontal) {
    const horiz = precomputeCoefficients(width, outWidth, filter);
    // Only the rows the vertical pass will read (all rows when there is no vertical pass).
    let rowFirst = 0;
    let rowLast = height;
    if (needVertical) {
      rowFirst = vert.start[0];
      rowLast = vert.start[outHeight - 1] + vert.count[outHeight - 1];
    }
    current = resampleHorizontal(src, width, channels, rowFirst, rowLast - rowFirst, outWidth, horiz);
    rowShift = rowFirst;
  }
  if (!needVertical) return current;
  return resampleVertical(current, outWidth, channels, rowShift, outHeight, vert);
}
