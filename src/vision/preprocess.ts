/**
 * The two preprocessing paths of the reference, to the pixel (docs/reference.md section 2): LLaVA-1.5's
 * (pad to a square, Pillow bicubic, CLIP normalisation, a thresholded +-1.9231 alpha), which is what
 * the LLM sees, and the Alpha-CLIP README's (resize + centre crop, alpha (x - 0.5) / 0.26).
 */
import { RegionVqaError } from "../common/errors.js";
import type { Tensor } from "../common/tensor.js";
import { pillowResizeBicubic } from "../common/imaging/pillow-resize.js";
import type { Mask, RgbImage } from "./types.js";

/** CLIP's normalisation constants, as float32 (the reference holds them in float32 arrays/tensors). */
export const CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073].map(Math.fround);
export const CLIP_STD = [0.26862954, 0.26130258, 0.27577711].map(Math.fround);
/** LLaVA pads to a square with the CLIP mean colour as 8-bit: tuple(int(x * 255) for x in image_mean). */
export const LLAVA_PAD_COLOR: readonly [number, number, number] = [122, 116, 104];
/** Alpha values the LLaVA demo feeds Alpha-CLIP: inside / outside the region (float32 of +-1.9231). */
export const LLAVA_ALPHA_FOREGROUND = Math.fround(1.9231);
export const LLAVA_ALPHA_BACKGROUND = Math.fround(-1.9231);
/** The LLaVA demo thresholds the sum of the three normalised mask channels at 6 (only near-white passes). */
export const LLAVA_MASK_SUM_THRESHOLD = 6;

const f = Math.fround;
const RESCALE = 1 / 255;

export function checkImage(image: RgbImage): void {
  if (
    !image ||
    !Number.isInteger(image.width) ||
    !Number.isInteger(image.height) ||
    image.width < 1 ||
    image.height < 1
  ) {
    throw new RegionVqaError(
      "invalid_request",
      "preprocess: the image needs positive integer width and height.",
    );
  }
  if (image.data.length !== image.width * image.height * 3) {
    throw new RegionVqaError(
      "invalid_request",
      `preprocess: ${image.width}x${image.height} RGB needs ${image.width * image.height * 3} bytes, got ${image.data.length}.`,
    );
  }
}

export function checkMaskFits(mask: Mask, image: RgbImage): void {
  if (
    mask.width !== image.width ||
    mask.height !== image.height ||
    mask.data.length !== mask.width * mask.height
  ) {
    throw new RegionVqaError(
      "mask_size_mismatch",
      `The mask is ${mask.width}x${mask.height} but the image is ${image.width}x${image.height}.`,
    );
  }
}

/** A mask's data must hold width x height values (`region_invalid`). */
export function checkMaskData(mask: Mask): void {
  if (mask.data.length !== mask.width * mask.height) {
    throw new RegionVqaError(
      "region_invalid",
      `The mask has ${mask.data.length} values; ${mask.width}x${mask.height} needs ${mask.width * mask.height}.`,
    );
  }
}

export function checkSize(size: number): void {
  if (!Number.isInteger(size) || size < 1 || size > 4096)
    throw new RangeError(`preprocess: invalid target size ${size}`);
}

/** A 0/1 mask as the 3-channel white-on-black image the reference pushes through the image geometry. */
export function maskToRgb(mask: Mask): RgbImage {
  const data = new Uint8Array(mask.width * mask.height * 3);
  for (let i = 0; i < mask.data.length; i++) {
    if (mask.data[i]) data[i * 3] = data[i * 3 + 1] = data[i * 3 + 2] = 255;
  }
  return { width: mask.width, height: mask.height, data };
}

/** LLaVA's expand2square: paste the image centred on a square canvas of the pad colour. */
export function padToSquare(
  image: RgbImage,
  color: readonly [number, number, number] = LLAVA_PAD_COLOR,
): RgbImage {
  const { width: w, height: h } = image;
  if (w === h) return image;
  const s = Math.max(w, h);
  const offX = Math.floor((s - w) / 2);
  const offY = Math.floor((s - h) / 2);
  const data = new Uint8Array(s * s * 3);
  for (let i = 0; i < s * s; i++) {
    data[i * 3] = color[0];
    data[i * 3 + 1] = color[1];
    data[i * 3 + 2] = color[2];
  }
  for (let y = 0; y < h; y++) {
    data.set(image.data.subarray(y * w * 3, (y + 1) * w * 3), ((y + offY) * s + offX) * 3);
  }
  return { width: s, height: s, data };
}

let clipLut: Float32Array | undefined;

/**
 * CLIP's normalisation of every 8-bit level, per channel ([3 * 256], channel-major), exactly as the
 * reference computes it: LLaVA's CLIPImageProcessor rescales in float64 (x * (1/255)) and casts to
 * float32, then (x - mean) / std in float32; torchvision's ToTensor/Normalize divide by 255 in
 * float32: both give the same float32 for every level.
 */
export function clipNormalizationLut(): Float32Array {
  if (!clipLut) {
    clipLut = new Float32Array(256 * 3);
    for (let c = 0; c < 3; c++) {
      for (let v = 0; v < 256; v++) clipLut[c * 256 + v] = f(f(f(v * RESCALE) - CLIP_MEAN[c]) / CLIP_STD[c]);
    }
  }
  return clipLut;
}

/** HWC uint8 -> CHW float32 normalised exactly as the reference (`clipNormalizationLut`). */
export function normalizeClip(hwc: Uint8Array, width: number, height: number): Float32Array {
  const plane = width * height;
  const out = new Float32Array(3 * plane);
  const lut = clipNormalizationLut();
  for (let i = 0; i < plane; i++) {
    out[i] = lut[hwc[i * 3]];
    out[plane + i] = lut[256 + hwc[i * 3 + 1]];
    out[2 * plane + i] = lut[512 + hwc[i * 3 + 2]];
  }
  return out;
}

export interface LlavaPreprocessed {
  /** [1, 3, R, R] normalised image. */
  pixelValues: Tensor;
  /** [1, 1, R, R] alpha: +1.9231 inside the region, -1.9231 outside (padding counts as outside). */
  alpha: Tensor;
  intermediates: {
    /** Padded + resized image, HWC uint8 [R, R, 3]. */
    resized: Uint8Array;
    /** Padded + resized mask image, HWC uint8 [R, R, 3] (absent without a mask). */
    maskResized?: Uint8Array;
    /** 1 where alpha is foreground, [R, R]. */
    foreground: Uint8Array;
  };
}

/** The image half of `preprocessForLlava`: computed once per image, shared by all its regions. */
export function preprocessImageForLlava(
  image: RgbImage,
  size: number,
): { pixelValues: Tensor; resized: Uint8Array } {
  checkImage(image);
  checkSize(size);
  const padded = padToSquare(image);
  const resized = pillowResizeBicubic(padded.data, padded.width, padded.height, 3, size, size);
  return { pixelValues: { data: normalizeClip(resized, size, size), shape: [1, 3, size, size] }, resized };
}

/**
 * The region half of `preprocessForLlava`: the mask goes through the image's geometry as a
 * white-on-black RGB image (same pad colour, so padding is background) and the sum of its normalised
 * channels > 6 is foreground. `null` = no mask = foreground everywhere (the demo's default).
 */
export function llavaAlphaFromMask(
  mask: Mask | null,
  size: number,
): { alpha: Tensor; maskResized?: Uint8Array; foreground: Uint8Array } {
  checkSize(size);
  const plane = size * size;
  const alpha = new Float32Array(plane);
  const foreground = new Uint8Array(plane);
  if (!mask) {
    alpha.fill(LLAVA_ALPHA_FOREGROUND);
    foreground.fill(1);
    return { alpha: { data: alpha, shape: [1, 1, size, size] }, foreground };
  }
  checkMaskData(mask);
  const m = padToSquare(maskToRgb(mask));
  const maskResized = pillowResizeBicubic(m.data, m.width, m.height, 3, size, size);
  alphaFromResizedMask(maskResized, alpha, foreground);
  return { alpha: { data: alpha, shape: [1, 1, size, size] }, maskResized, foreground };
}

/**
 * The padded + resized mask image (HWC) -> alpha and foreground: the sum of its three normalised
 * channels (float32, channel 0 + 1, then + 2, the reference's order) > 6 is foreground. Returns the
 * foreground count.
 */
export function alphaFromResizedMask(
  maskResized: Uint8Array,
  alpha: Float32Array,
  foreground: Uint8Array,
): number {
  const lut = clipNormalizationLut();
  let count = 0;
  for (let i = 0; i < alpha.length; i++) {
    const sum = f(
      f(lut[maskResized[3 * i]] + lut[256 + maskResized[3 * i + 1]]) + lut[512 + maskResized[3 * i + 2]],
    );
    foreground[i] = sum > LLAVA_MASK_SUM_THRESHOLD ? 1 : 0;
    alpha[i] = foreground[i] ? LLAVA_ALPHA_FOREGROUND : LLAVA_ALPHA_BACKGROUND;
    count += foreground[i];
  }
  return count;
}

/**
 * LLaVA-1.5 preprocessing as the Alpha-CLIP LLaVA demo does it: pad to square with (122,116,104),
 * Pillow bicubic to R x R, /255, CLIP normalisation; the mask as in `llavaAlphaFromMask`. For several
 * regions of one image, call `preprocessImageForLlava` once and `llavaAlphaFromMask` per region.
 */
export function preprocessForLlava(image: RgbImage, mask: Mask | null, size: number): LlavaPreprocessed {
  const { pixelValues, resized } = preprocessImageForLlava(image, size);
  if (mask) checkMaskFits(mask, image);
  const { alpha, maskResized, foreground } = llavaAlphaFromMask(mask, size);
  return { pixelValues, alpha, intermediates: { resized, maskResized, foreground } };
}

/** Python's round(): half to even. torchvision's CenterCrop uses it for the crop offset. */
function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** torchvision Resize(int): the short side becomes `size`, the long side int(size * long / short). */
export function shortSideResizeDims(
  width: number,
  height: number,
  size: number,
): { width: number; height: number } {
  if (width <= height) return { width: size, height: Math.trunc((size * height) / width) };
  return { width: Math.trunc((size * width) / height), height: size };
}

/**
 * torch.nn.functional.interpolate(mode="bilinear", align_corners=False, antialias=False) on one float
 * plane, with torch's float32 index/weight arithmetic.
 */
export function bilinearResizePlane(
  src: Float32Array,
  width: number,
  height: number,
  outWidth: number,
  outHeight: number,
): Float32Array {
  const axis = (inSize: number, outSize: number) => {
    const scale = f(inSize / outSize);
    const i0 = new Int32Array(outSize);
    const i1 = new Int32Array(outSize);
    const w0 = new Float32Array(outSize);
    const w1 = new Float32Array(outSize);
    for (let i = 0; i < outSize; i++) {
      // torch computes this index in double precision (float scale times the double i + 0.5); rounding
      // it to float32 here moves alpha values by up to 1e-4 at 336, so it stays a double.
      let real = scale * (i + 0.5) - 0.5;
      if (real < 0) real = 0;
      const idx = Math.min(Math.floor(real), inSize - 1);
      const lambda = Math.min(Math.max(f(real - idx), 0), 1);
      i0[i] = idx;
      i1[i] = idx < inSize - 1 ? idx + 1 : idx;
      w0[i] = f(1 - lambda);
      w1[i] = lambda;
    }
    return { i0, i1, w0, w1 };
  };
  const ax = axis(width, outWidth);
  const ay = axis(height, outHeight);
  const out = new Float32Array(outWidth * outHeight);
  for (let y = 0; y < outHeight; y++) {
    const r0 = ay.i0[y] * width;
    const r1 = ay.i1[y] * width;
    const wy0 = ay.w0[y];
    const wy1 = ay.w1[y];
    for (let x = 0; x < outWidth; x++) {
      const left = f(f(src[r0 + ax.i0[x]] * wy0) + f(src[r1 + ax.i0[x]] * wy1));
      const right = f(f(src[r0 + ax.i1[x]] * wy0) + f(src[r1 + ax.i1[x]] * wy1));
      out[y * outWidth + x] = f(f(left * ax.w0[x]) + f(right * ax.w1[x]));
    }
  }
  return out;
}

export interface ReadmePreprocessOptions {
  /**
   * "aligned" (default): the mask is resized and centre-cropped exactly like the image, so alpha lines
   * up with the pixels. "reference": the Alpha-CLIP README's transform, which squashes the whole mask to
   * R x R while the image is cropped: on non-square images the two do NOT line up (kept opt-in only for
   * reproducing the reference numbers). Both are identical for square images.
   */
  maskGeometry?: "aligned" | "reference";
}

export interface ReadmePreprocessed {
  pixelValues: Tensor;
  alpha: Tensor;
  intermediates: {
    /** Short-side resized + centre-cropped image, HWC uint8 [R, R, 3]. */
    resized: Uint8Array;
  };
}

const README_ALPHA_MEAN = f(0.5);
const README_ALPHA_STD = f(0.26);

/**
 * The Alpha-CLIP README preprocessing (CLIP-style scoring, not the LLaVA path): Pillow bicubic resize of
 * the short side to R, centre crop R x R, CLIP normalisation; mask (1 = region) to float, bilinear resize
 * without antialiasing, (x - 0.5) / 0.26. No mask = the whole image.
 */
export function preprocessForAlphaClipReadme(
  image: RgbImage,
  mask: Mask | null,
  size: number,
  options: ReadmePreprocessOptions = {},
): ReadmePreprocessed {
  checkImage(image);
  checkSize(size);
  const geometry = options.maskGeometry ?? "aligned";
  const dims = shortSideResizeDims(image.width, image.height, size);
  const big = pillowResizeBicubic(image.data, image.width, image.height, 3, dims.width, dims.height);
  const top = roundHalfEven((dims.height - size) / 2);
  const left = roundHalfEven((dims.width - size) / 2);
  const resized = new Uint8Array(size * size * 3);
  for (let y = 0; y < size; y++) {
    resized.set(
      big.subarray(((y + top) * dims.width + left) * 3, ((y + top) * dims.width + left + size) * 3),
      y * size * 3,
    );
  }
  const pixelValues: Tensor = { data: normalizeClip(resized, size, size), shape: [1, 3, size, size] };

  const plane = new Float32Array(image.width * image.height);
  if (mask) {
    checkMaskFits(mask, image);
    for (let i = 0; i < plane.length; i++) plane[i] = mask.data[i] ? 1 : 0;
  } else {
    plane.fill(1);
  }
  let alphaPlane: Float32Array;
  if (geometry === "reference") {
    alphaPlane = bilinearResizePlane(plane, image.width, image.height, size, size);
  } else {
    const scaled = bilinearResizePlane(plane, image.width, image.height, dims.width, dims.height);
    alphaPlane = new Float32Array(size * size);
    for (let y = 0; y < size; y++) {
      alphaPlane.set(
        scaled.subarray((y + top) * dims.width + left, (y + top) * dims.width + left + size),
        y * size,
      );
    }
  }
  for (let i = 0; i < alphaPlane.length; i++)
    alphaPlane[i] = f(f(alphaPlane[i] - README_ALPHA_MEAN) / README_ALPHA_STD);
  return { pixelValues, alpha: { data: alphaPlane, shape: [1, 1, size, size] }, intermediates: { resized } };
}
