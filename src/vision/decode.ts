import sharp, { type Metadata, type OutputInfo } from "sharp";
import { RegionVqaError, type ErrorCode } from "../common/errors.js";
import { pixelsToMask, sha256Hex, splitPixels } from "../common/imaging/kernels.js";
import { ImagingPool } from "../common/imaging/pool.js";
import { knownMask } from "./region.js";
import type { Mask, RgbImage } from "./types.js";

/** Formats accepted from untrusted input. SVG/PDF and friends are refused on purpose (renderers, not images). */
export const SUPPORTED_IMAGE_FORMATS = ["png", "jpeg", "webp", "gif", "tiff"] as const;

export interface DecodeLimits {
  /** Largest accepted encoded size in bytes (default 20 MB). */
  maxBytes?: number;
  /** Largest accepted width x height (default 40 megapixels); checked from the header before any pixel is allocated. */
  maxPixels?: number;
  /** Longest accepted side (default: no limit besides maxPixels); checked from the header too. */
  maxSide?: number;
}

export const DEFAULT_DECODE_LIMITS: Required<Pick<DecodeLimits, "maxBytes" | "maxPixels">> = {
  maxBytes: 20 * 1024 * 1024,
  maxPixels: 40_000_000,
};

export interface DecodedImage extends RgbImage {
  /** The alpha channel (HW, 0..255) when the image has one, else undefined. */
  alpha?: Uint8Array;
  /** Source format as sharp names it (png, jpeg, ...). */
  format: string;
  /** SHA-256 (hex) of the encoded bytes it was decoded from: the image's content key in the caches. */
  sha256?: string;
}

/** Where decoding's CPU work runs (default: the process's shared pool). */
export interface DecodeOptions {
  pool?: ImagingPool;
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

interface RawPixels {
  data: Buffer;
  width: number;
  height: number;
  channels: number;
  format: string;
}

/** Checks bytes and the header against the limits, then decodes to 8-bit pixels (1-4 channels). */
async function decodeRaw(
  bytes: Uint8Array,
  limits: DecodeLimits | undefined,
  codes: DecodeErrorCodes,
  pool: ImagingPool,
  /** Called once the header passed every limit, before the pixels are decoded. */
  onHeaderChecked?: () => void,
): Promise<RawPixels> {
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
  // EXIF orientations 5-8 swap the sides, which the limit does not care about.
  const longest = Math.max(metadata.width ?? 0, metadata.height ?? 0);
  if (limits?.maxSide !== undefined && longest > limits.maxSide) {
    const [width, height] =
      (metadata.orientation ?? 1) >= 5
        ? [metadata.height, metadata.width]
        : [metadata.width, metadata.height];
    // The encoder pads images to a square: a 1 x 10 000 000 strip has few pixels but a huge square.
    throw new RegionVqaError(
      "image_too_many_pixels",
      `The ${codes.what} is ${width}x${height}; its longest side may be at most ${limits.maxSide} pixels.`,
      { width, height, maxImageSide: limits.maxSide },
    );
  }
  onHeaderChecked?.();
  let raw: { data: Buffer; info: OutputInfo };
  try {
    raw = await pool.schedule(() =>
      sharp(bytes, options)
        .toColourspace(metadata.channels === 1 || metadata.channels === 2 ? "b-w" : "srgb")
        .raw({ depth: "uchar" })
        .toBuffer({ resolveWithObject: true }),
    );
  } catch (err) {
    throw decodeFailure(err, codes, maxPixels);
  }
  const { width, height, channels } = raw.info;
  if (raw.data.length !== width * height * channels) {
    throw new RegionVqaError(codes.undecodable, `The ${codes.what} decoded to an unexpected buffer size.`);
  }
  return { data: raw.data, width, height, channels, format };
}

/**
 * Decode PNG, JPEG, WebP, GIF (first frame) or TIFF bytes into 8-bit RGB, EXIF orientation applied.
 * Greyscale, palette and CMYK become RGB; an alpha channel is dropped from `data` and returned as
 * `alpha`. Throws `image_too_large`, `image_too_many_pixels` (checked before pixels are allocated) or
 * `image_undecodable` (truncated data, non-image bytes, unsupported formats).
 */
export async function decodeImage(
  bytes: Uint8Array,
  limits?: DecodeLimits,
  options: DecodeOptions = {},
): Promise<DecodedImage> {
  const pool = options.pool ?? ImagingPool.shared();
  // The content key is hashed while the pixels are decoded, both off the event loop; nothing is
  // queued for an image whose header breaks a limit.
  let hashing: Promise<string> | undefined;
  const raw = await decodeRaw(bytes, limits, IMAGE_ERRORS, pool, () => {
    hashing = sha256Hex(pool, bytes);
    hashing.catch(() => undefined);
  });
  // RGB as sharp returned it is already our layout: no copy of a 36 MB photo.
  const { rgb, alpha } =
    raw.channels === 3
      ? { rgb: new Uint8Array(raw.data.buffer, raw.data.byteOffset, raw.data.length), alpha: undefined }
      : await splitPixels(pool, raw.data, raw.channels);
  return {
    width: raw.width,
    height: raw.height,
    data: rgb,
    alpha,
    format: raw.format,
    sha256: await hashing,
  };
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
  options: DecodeOptions = {},
): Promise<Mask> {
  const pool = options.pool ?? ImagingPool.shared();
  const img = await decodeRaw(bytes, limits, MASK_ERRORS, pool);
  if (img.width !== width || img.height !== height) {
    throw new RegionVqaError(
      "mask_size_mismatch",
      `The mask is ${img.width}x${img.height} but the image is ${width}x${height}; masks must have the image's size.`,
      { maskWidth: img.width, maskHeight: img.height, width, height },
    );
  }
  const { data, area } = await pixelsToMask(pool, img.data, img.channels);
  return knownMask({ width, height, data }, area);
}
