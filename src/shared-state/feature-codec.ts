/**
 * The byte form of shared cache entries: a bundle of named float tensors plus a little JSON metadata
 * (a region's embeddings; a segmenter's image embeddings and their frame). Every entry carries its
 * tensors' names and shapes, its element type, a format version, the sha256 of the key it was written
 * under and a CRC-32 of the whole, so a truncated, corrupted or foreign value (written by another
 * program, another version, or copied under another key) is recognised and ignored instead of being fed
 * to a model.
 *
 *   0   4  magic "RVQT"
 *   4   1  format version (1)
 *   5   1  element type: 1 = float16, 2 = float32
 *   6   2  zero
 *   8   4  length H of the JSON header (u32 LE)
 *   12  32 sha256 of the cache key
 *   44  H  JSON {"meta": ..., "tensors": [{"name", "shape"}, ...]}
 *   ..     the tensors' values in that order (little-endian)
 *   end-4  CRC-32 of every byte before it
 */
import { createHash } from "node:crypto";
import { crc32 } from "node:zlib";
import { float16ArrayToFloat32, float32ArrayToFloat16 } from "../common/onnx/half.js";

export type SharedFeatureDtype = "fp16" | "fp32";

export interface NamedTensor {
  name: string;
  shape: number[];
  data: Float32Array;
}

/** What one entry holds: tensors and JSON-serialisable metadata. */
export interface TensorBundle {
  tensors: NamedTensor[];
  meta?: unknown;
}

/** A region's embeddings: the projected rows and, when the vision model gives it, its CLIP embedding. */
export interface StoredEmbeddings {
  data: Float32Array;
  count: number;
  imageEmbed?: Float32Array;
}

const MAGIC = 0x54515652; // "RVQT" read as a little-endian u32
const VERSION = 1;
const FIXED_BYTES = 44;
const DTYPE_CODES: Record<SharedFeatureDtype, number> = { fp16: 1, fp32: 2 };
/** Far above any real model (SAM 2.1-tiny's image embeddings: 4.2 M values); refuses absurd headers. */
const MAX_VALUES = 64 * 1024 * 1024;
const MAX_HEADER_BYTES = 64 * 1024;
const FLOAT16_MAX = 65504;

function keyDigest(key: string): Buffer {
  return createHash("sha256").update(key).digest();
}

/** Whether every value survives float16 without overflowing. */
function fitsFloat16(values: Float32Array): boolean {
  for (const v of values) if (!(Math.abs(v) <= FLOAT16_MAX)) return false;
  return true;
}

/** The element type an entry is actually written with: fp16 only when every value fits. */
function bundleDtype(bundle: TensorBundle, dtype: SharedFeatureDtype): SharedFeatureDtype {
  return dtype === "fp16" && bundle.tensors.every((t) => fitsFloat16(t.data)) ? "fp16" : "fp32";
}

/**
 * Rounds a bundle's values to what its shared entry will hold, so the replica that computed them uses
 * exactly the numbers every other replica reads back (and all of them answer alike).
 */
export function roundBundleForSharing(bundle: TensorBundle, dtype: SharedFeatureDtype): TensorBundle {
  if (bundleDtype(bundle, dtype) === "fp32") return bundle;
  return {
    ...bundle,
    tensors: bundle.tensors.map((t) => ({
      ...t,
      data: float16ArrayToFloat32(float32ArrayToFloat16(t.data)),
    })),
  };
}

export function encodeBundle(key: string, bundle: TensorBundle, dtype: SharedFeatureDtype): Buffer {
  for (const t of bundle.tensors) {
    if (t.shape.reduce((a, b) => a * b, 1) !== t.data.length) {
      throw new RangeError(`tensor ${t.name} has ${t.data.length} values for shape [${t.shape.join(", ")}]`);
    }
  }
  const used = bundleDtype(bundle, dtype);
  const header = Buffer.from(
    JSON.stringify({
      meta: bundle.meta ?? null,
      tensors: bundle.tensors.map((t) => ({ name: t.name, shape: t.shape })),
    }),
  );
  const payloads = bundle.tensors.map((t) => {
    const typed = used === "fp16" ? float32ArrayToFloat16(t.data) : t.data;
    return new Uint8Array(typed.buffer, typed.byteOffset, typed.byteLength);
  });
  const payloadBytes = payloads.reduce((a, p) => a + p.byteLength, 0);
  const out = Buffer.alloc(FIXED_BYTES + header.length + payloadBytes + 4);
  out.writeUInt32LE(MAGIC, 0);
  out.writeUInt8(VERSION, 4);
  out.writeUInt8(DTYPE_CODES[used], 5);
  out.writeUInt32LE(header.length, 8);
  keyDigest(key).copy(out, 12);
  header.copy(out, FIXED_BYTES);
  let at = FIXED_BYTES + header.length;
  for (const p of payloads) {
    out.set(p, at);
    at += p.byteLength;
  }
  out.writeUInt32LE(crc32(out.subarray(0, out.length - 4)), out.length - 4);
  return out;
}

/** The bundle an entry holds, or why it was refused (for logs and metrics). */
export type DecodedBundle = { ok: true; value: TensorBundle } | { ok: false; reason: string };

function readValues(bytes: Buffer, at: number, count: number, dtype: number): Float32Array {
  // Copy into an aligned buffer: Redis replies may sit at any byte offset.
  const size = dtype === 1 ? 2 : 4;
  const own = new Uint8Array(count * size);
  own.set(bytes.subarray(at, at + count * size));
  return dtype === 1 ? float16ArrayToFloat32(new Uint16Array(own.buffer)) : new Float32Array(own.buffer);
}

export function decodeBundle(key: string, bytes: Buffer): DecodedBundle {
  const fail = (reason: string): DecodedBundle => ({ ok: false, reason });
  if (bytes.length < FIXED_BYTES + 4) return fail("too short");
  if (bytes.readUInt32LE(0) !== MAGIC) return fail("not a region-vqa entry");
  if (bytes.readUInt8(4) !== VERSION) return fail(`format version ${bytes.readUInt8(4)}`);
  const dtype = bytes.readUInt8(5);
  if (dtype !== 1 && dtype !== 2) return fail(`unknown element type ${dtype}`);
  if (bytes.readUInt32LE(bytes.length - 4) !== crc32(bytes.subarray(0, bytes.length - 4)))
    return fail("checksum");
  if (!keyDigest(key).equals(bytes.subarray(12, 44))) return fail("written under another key");
  const headerBytes = bytes.readUInt32LE(8);
  if (headerBytes > MAX_HEADER_BYTES || FIXED_BYTES + headerBytes + 4 > bytes.length)
    return fail("header length");
  let header: { meta?: unknown; tensors?: unknown };
  try {
    header = JSON.parse(bytes.toString("utf8", FIXED_BYTES, FIXED_BYTES + headerBytes)) as typeof header;
  } catch {
    return fail("header is not JSON");
  }
  if (!Array.isArray(header.tensors)) return fail("header lists no tensors");
  const specs: Array<{ name: string; shape: number[]; count: number }> = [];
  let values = 0;
  for (const t of header.tensors as Array<{ name?: unknown; shape?: unknown }>) {
    const shape = t?.shape;
    if (
      typeof t?.name !== "string" ||
      !Array.isArray(shape) ||
      !shape.every((d) => Number.isInteger(d) && d >= 0)
    ) {
      return fail("malformed tensor header");
    }
    const count = (shape as number[]).reduce((a, b) => a * b, 1);
    values += count;
    if (values > MAX_VALUES) return fail("implausible size");
    specs.push({ name: t.name, shape: shape as number[], count });
  }
  const size = dtype === 1 ? 2 : 4;
  if (bytes.length !== FIXED_BYTES + headerBytes + values * size + 4) return fail("length");
  let at = FIXED_BYTES + headerBytes;
  const tensors: NamedTensor[] = [];
  for (const spec of specs) {
    const data = readValues(bytes, at, spec.count, dtype);
    if (!data.every(Number.isFinite)) return fail("non-finite values");
    tensors.push({ name: spec.name, shape: spec.shape, data });
    at += spec.count * size;
  }
  return { ok: true, value: { tensors, meta: header.meta ?? undefined } };
}

/** A region's embeddings as a bundle: "rows" [count, width] and, when present, "image_embed" [n]. */
function embeddingsBundle(value: StoredEmbeddings): TensorBundle {
  const width = value.count > 0 ? value.data.length / value.count : 0;
  if (!Number.isInteger(width)) throw new RangeError("embedding rows are not all the same width");
  const tensors: NamedTensor[] = [{ name: "rows", shape: [value.count, width], data: value.data }];
  if (value.imageEmbed)
    tensors.push({ name: "image_embed", shape: [value.imageEmbed.length], data: value.imageEmbed });
  return { tensors };
}

/** Rounds a region's embeddings to what its shared entry will hold (see `roundBundleForSharing`). */
export function roundForSharing(value: StoredEmbeddings, dtype: SharedFeatureDtype): StoredEmbeddings {
  const bundle = embeddingsBundle(value);
  const rounded = roundBundleForSharing(bundle, dtype);
  if (rounded === bundle) return value;
  const [rows, embed] = rounded.tensors;
  return { ...value, data: rows.data, ...(embed ? { imageEmbed: embed.data } : {}) };
}

export function encodeEmbeddings(key: string, value: StoredEmbeddings, dtype: SharedFeatureDtype): Buffer {
  return encodeBundle(key, embeddingsBundle(value), dtype);
}

/** A region's embeddings, or why the entry was refused. */
export type DecodedEmbeddings = { ok: true; value: StoredEmbeddings } | { ok: false; reason: string };

export function decodeEmbeddings(key: string, bytes: Buffer): DecodedEmbeddings {
  const decoded = decodeBundle(key, bytes);
  if (!decoded.ok) return decoded;
  const [rows, embed, ...rest] = decoded.value.tensors;
  if (
    rows?.name !== "rows" ||
    rows.shape.length !== 2 ||
    rest.length > 0 ||
    (embed && embed.name !== "image_embed")
  ) {
    return { ok: false, reason: "not region embeddings" };
  }
  return {
    ok: true,
    value: { data: rows.data, count: rows.shape[0], ...(embed ? { imageEmbed: embed.data } : {}) },
  };
}
