/**
 * The byte form of one region's embeddings in the shared cache. Every entry carries its own shape, its
 * element type, the sha256 of the key it was written under and a CRC-32 of the whole, so a truncated,
 * corrupted or foreign value (written by another program, another version, or copied under another
 * key) is recognised and ignored instead of being fed to the LLM.
 *
 *   0   4  magic "RVQF"
 *   4   1  format version (1)
 *   5   1  element type: 1 = float16, 2 = float32
 *   6   2  zero
 *   8   4  rows (u32 LE)            12  4  row width (u32 LE)
 *   16  4  image_embed width (u32 LE, 0 = none)
 *   20  32 sha256 of the cache key
 *   52  .. rows * width values, then the image_embed values (little-endian)
 *   end-4  CRC-32 of every byte before it
 */
import { createHash } from "node:crypto";
import { crc32 } from "node:zlib";
import { float16ArrayToFloat32, float32ArrayToFloat16 } from "../common/onnx/half.js";

export type SharedFeatureDtype = "fp16" | "fp32";

/** What is stored: the projected rows and, when the vision model gives it, the region's CLIP embedding. */
export interface StoredEmbeddings {
  data: Float32Array;
  count: number;
  imageEmbed?: Float32Array;
}

const MAGIC = 0x46515652; // "RVQF" read as a little-endian u32
const VERSION = 1;
const HEADER_BYTES = 52;
const DTYPE_CODES: Record<SharedFeatureDtype, number> = { fp16: 1, fp32: 2 };
/** Far above any real model (LLaVA-1.5: 576 x 4096); refuses absurd headers before allocating. */
const MAX_VALUES = 64 * 1024 * 1024;

function keyDigest(key: string): Buffer {
  return createHash("sha256").update(key).digest();
}

function bytesOf(values: Float32Array, dtype: SharedFeatureDtype): Uint8Array {
  const typed = dtype === "fp16" ? float32ArrayToFloat16(values) : values;
  return new Uint8Array(typed.buffer, typed.byteOffset, typed.byteLength);
}

const FLOAT16_MAX = 65504;

/** Whether every value survives float16 without overflowing (otherwise the entry is stored as float32). */
function fitsFloat16(values: Float32Array): boolean {
  for (const v of values) if (!(Math.abs(v) <= FLOAT16_MAX)) return false;
  return true;
}

/** The element type an entry is actually written with: fp16 only when every value fits. */
function entryDtype(value: StoredEmbeddings, dtype: SharedFeatureDtype): SharedFeatureDtype {
  if (dtype === "fp32") return "fp32";
  return fitsFloat16(value.data) && (!value.imageEmbed || fitsFloat16(value.imageEmbed)) ? "fp16" : "fp32";
}

/**
 * Rounds values to what their shared entry will hold, so the replica that encoded a region uses exactly
 * the numbers every other replica reads back (and all of them answer alike).
 */
export function roundForSharing(value: StoredEmbeddings, dtype: SharedFeatureDtype): StoredEmbeddings {
  if (entryDtype(value, dtype) === "fp32") return value;
  const round = (v: Float32Array) => float16ArrayToFloat32(float32ArrayToFloat16(v));
  return {
    ...value,
    data: round(value.data),
    ...(value.imageEmbed ? { imageEmbed: round(value.imageEmbed) } : {}),
  };
}

export function encodeEmbeddings(key: string, value: StoredEmbeddings, dtype: SharedFeatureDtype): Buffer {
  const width = value.count > 0 ? value.data.length / value.count : 0;
  if (!Number.isInteger(width)) throw new RangeError("embedding rows are not all the same width");
  dtype = entryDtype(value, dtype);
  const rows = bytesOf(value.data, dtype);
  const embed = value.imageEmbed ? bytesOf(value.imageEmbed, dtype) : new Uint8Array(0);
  const out = Buffer.alloc(HEADER_BYTES + rows.byteLength + embed.byteLength + 4);
  out.writeUInt32LE(MAGIC, 0);
  out.writeUInt8(VERSION, 4);
  out.writeUInt8(DTYPE_CODES[dtype], 5);
  out.writeUInt32LE(value.count, 8);
  out.writeUInt32LE(width, 12);
  out.writeUInt32LE(value.imageEmbed?.length ?? 0, 16);
  keyDigest(key).copy(out, 20);
  out.set(rows, HEADER_BYTES);
  out.set(embed, HEADER_BYTES + rows.byteLength);
  out.writeUInt32LE(crc32(out.subarray(0, out.length - 4)), out.length - 4);
  return out;
}

/** Why an entry was refused (for logs and metrics), or the embeddings it holds. */
export type DecodedEmbeddings = { ok: true; value: StoredEmbeddings } | { ok: false; reason: string };

function readValues(bytes: Buffer, at: number, count: number, dtype: number): Float32Array {
  // Copy into an aligned buffer: Redis replies may sit at any byte offset.
  const size = dtype === 1 ? 2 : 4;
  const own = new Uint8Array(count * size);
  own.set(bytes.subarray(at, at + count * size));
  return dtype === 1 ? float16ArrayToFloat32(new Uint16Array(own.buffer)) : new Float32Array(own.buffer);
}

export function decodeEmbeddings(key: string, bytes: Buffer): DecodedEmbeddings {
  const fail = (reason: string): DecodedEmbeddings => ({ ok: false, reason });
  if (bytes.length < HEADER_BYTES + 4) return fail("too short");
  if (bytes.readUInt32LE(0) !== MAGIC) return fail("not a region-vqa entry");
  if (bytes.readUInt8(4) !== VERSION) return fail(`format version ${bytes.readUInt8(4)}`);
  const dtype = bytes.readUInt8(5);
  if (dtype !== 1 && dtype !== 2) return fail(`unknown element type ${dtype}`);
  if (bytes.readUInt32LE(bytes.length - 4) !== crc32(bytes.subarray(0, bytes.length - 4)))
    return fail("checksum");
  if (!keyDigest(key).equals(bytes.subarray(20, 52))) return fail("written under another key");
  const count = bytes.readUInt32LE(8);
  const width = bytes.readUInt32LE(12);
  const embedWidth = bytes.readUInt32LE(16);
  const values = count * width + embedWidth;
  if (values > MAX_VALUES) return fail("implausible size");
  if (bytes.length !== HEADER_BYTES + values * (dtype === 1 ? 2 : 4) + 4) return fail("length");
  const data = readValues(bytes, HEADER_BYTES, count * width, dtype);
  const value: StoredEmbeddings = { data, count };
  if (embedWidth > 0)
    value.imageEmbed = readValues(
      bytes,
      HEADER_BYTES + data.length * (dtype === 1 ? 2 : 4),
      embedWidth,
      dtype,
    );
  if (!data.every(Number.isFinite) || (value.imageEmbed && !value.imageEmbed.every(Number.isFinite))) {
    return fail("non-finite values");
  }
  return { ok: true, value };
}
