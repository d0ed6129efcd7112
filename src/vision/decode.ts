import sharp, { type Metadata, type OutputInfo } from "sharp";
import { RegionVqaError, type ErrorCode } from "../common/errors.js";
import type { Mask, RgbImage } from "./types.js";

/** Formats accepted from untrusted input. SVG/PDF and friends are refused on purpose (renderers, not images). */
export const SUPPORTED_IMAGE_FORMATS = ["png", "jpeg", "webp", "gif", "tiff"] as const;

export interface DecodeLimits {
  /** Largest accepted encoded size in bytes (default 20 MB). */
  maxBytes?: number;
  /** Largest accepted width x height (default 40 megapixels); checked from the header before any pixel is allocated. */
  maxPixels?: number;
}

export const DEFAULT_DECODE_LIMITS: Required<DecodeLimits> = {
  maxBytes: 20 * 1024 * 1024,
  maxPixels: 40_000_000,
};

export interface DecodedImage extends RgbImage {
  /** The alpha channel (HW, 0..255) when the image has one, else undefined. */
  alpha?: Uint8Array;
  /** Source format as sharp names it (png, jpeg, ...). */
  format: string;
}

interface DecodeErrorCodes {
  undecodable: ErrorCode;
  what: string;
}

const IMAGE_ERRORS: DecodeErrorCodes = { undecodable: "image_undecodable", what: "image" };
const MASK_ERRORS: DecodeErrorCodes = { undecodable: "mask_undecodable", what: "mask image" };

function decodeFailure(err: unknown, codes: DecodeErrorCodes, maxPixels: number): RegionVqaError {
  const message = (err as Error).message ?? String(err);
  // sharp's own header check (limitInputPixels) fires before any pixel buffer exists.
  if (/pixel limit/i.test(message)) {
    return new RegionVqaError(
      "image_too_many_pixels",
      `The ${codes.what} has more pixels than the limit of ${maxPixels}.`,
      { maxPixels },
    );
  }
  return new RegionVqaError(codes.undecodable, `The ${codes.what} could not be decoded: ${message}`);
}

async function decodeRaw(
  bytes: Uint8Array,
  limits: DecodeLimits | undefined,
  codes: DecodeErrorCodes,
): Promise<DecodedImage> {
  const maxBytes = limits?.maxBytes ?? DEFAULT_DECODE_LIMITS.maxBytes;
  const maxPixels = limits?.maxPixels ?? DEFAULT_DECODE_LIMITS.maxPixels;
  if (!(bytes instanceof Uint8Array) || bytes.length === 0) {
    throw new RegionVqaError(codes.undecodable, `The ${codes.what} is empty.`);
  }
  if (bytes.length > maxBytes) {
    throw new RegionVqaError(
      "image_too_large",
      `The ${codes.what} is ${bytes.length} bytes; the limit is ${maxBytes} bytes.`,
      { bytes: bytes.length, maxBytes },
    );
  }
  // Pillow (the reference) ignores embedded ICC profiles when it converts to RGB; so do we, so that
  // pixel values match. EXIF orientation is applied (autoOrient) so boxes/masks refer to what people see.
  const options = {
    failOn: "error" as const,
    limitInputPixels: maxPixels,
    ignoreIcc: true,
    autoOrient: true,
  };
  let metadata: Metadata;
  try {
    metadata = await sharp(bytes, options).metadata();
  } catch (err) {
    throw decodeFailure(err, codes, maxPixels);
  }
  const format = metadata.format ?? "unknown";
  if (!(SUPPORTED_IMAGE_FORMATS as readonly string[]).includes(format)) {
    throw new RegionVqaError(
      codes.undecodable,
      `The ${codes.what} is in format "${format}"; supported: ${SUPPORTED_IMAGE_FORMATS.join(", ")}.`,
    );
  }
  const pixels = (metadata.width ?? 0) * (metadata.height ?? 0);
  if (pixels > maxPixels) {
    throw new RegionVqaError(
      "image_too_many_pixels",
      `The ${codes.what} is ${metadata.width}x${metadata.height} (${pixels} pixels); the limit is ${maxPixels} pixels.`,
      { width: metadata.width, height: metadata.height, maxPixels },
    );
  }
  let raw: { data: Buffer; info: OutputInfo };
  try {
    raw = await sharp(bytes, options)
      .toColourspace(metadata.channels === 1 || metadata.channels === 2 ? "b-w" : "srgb")
      .raw({ depth: "uchar" })
      .toBuffer({ resolveWithObject: true });
  } catch (err) {
    throw decodeFailure(err, codes, maxPixels);
  }
  const { width, height, channels } = raw.info;
  const src = raw.data;
  const n = width * height;
  if (src.length !== n * channels) {
    throw new RegionVqaError(codes.undecodable, `The ${codes.what} decoded to an unexpected buffer size.`);
  }
  const rgb = new Uint8Array(n * 3);
  let alpha: Uint8Array | undefined;
  const hasAlpha = channels === 2 || channels === 4;
  if (hasAlpha) alpha = new Uint8Array(n);
  const colour = channels >= 3;
  for (let i = 0; i < n; i++) {
    const s = i * channels;
    if (colour) {
      rgb[i * 3] = src[s];
      rgb[i * 3 + 1] = src[s + 1];
      rgb[i * 3 + 2] = src[s + 2];
    } else {
      // Greyscale -> RGB replicates the level, as Pillow's convert("RGB") does.
      rgb[i * 3] = rgb[i * 3 + 1] = rgb[i * 3 + 2] = src[s];
    }
    if (alpha) alpha[i] = src[s + channels - 1];
  }
  return { width, height, data: rgb, alpha, format };
}

/**
 * Decode PNG, JPEG, WebP, GIF (first frame) or TIFF bytes into 8-bit RGB, EXIF orientation applied.
 * Greyscale, palette and CMYK become RGB; an alpha channel is dropped from `data` and returned as
 * `alpha`. Throws `image_too_large`, `image_too_many_pixels` (checked before pixels are allocated) or
 * `image_undecodable` (truncated data, non-image bytes, unsupported formats).
 */
export function decodeImage(bytes: Uint8Array, limits?: DecodeLimits): Promise<DecodedImage> {
  return decodeRaw(bytes, limits, IMAGE_ERRORS);
}

/**
 * Decode a mask image (any supported format) that must be `width` x `height`: a pixel is inside the
 * region when any of its colour channels is non-zero. Its alpha channel, if any, is ignored: a
 * transparent-but-white pixel is still white. Never resizes: a size mismatch is `mask_size_mismatch`.
 */
export async function decodeMaskImage(
  bytes: Uint8Array,
  width: number,
  height: number,
  limits?: DecodeLimits,
): Promise<Mask> {
  const img = await decodeRaw(bytes, limits, MASK_ERRORS);
  if (img.width !== width || img.height !== height) {
    throw new RegionVqaError(
      "mask_size_mismatch",
      `The mask is ${img.width}x${img.height} but the image is ${width}x${height}; masks must have the image's size.`,
      { maskWidth: img.width, maskHeight: img.height, width, height },
    );
  }
  const n = width * height;
  const data = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    data[i] = img.data[i * 3] | img.data[i * 3 + 1] | img.data[i * 3 + 2] ? 1 : 0;
  }
  return { width, height, data };
}
