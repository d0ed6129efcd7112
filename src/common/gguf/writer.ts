/**
 * GGUF v3 writer (the format llama.cpp and node-llama-cpp read). Layout:
 *   "GGUF" u32 version=3, u64 tensor_count, u64 kv_count, kv pairs, tensor infos,
 *   padding to `general.alignment` (default 32), tensor data (each tensor's start aligned).
 * Strings are u64 length + UTF-8 bytes; 2-D weights given in PyTorch order [out, in] are stored
 * row-major, i.e. ggml ne = [in, out] (the shape reversed).
 *
 * Tensor data is streamed to the file tensor by tensor, in chunks, so multi-GB files never sit in one
 * buffer; tensors may also be given lazily (a function producing the data when its turn comes).
 */
import { open, rename, rm } from "node:fs/promises";
import { endianness } from "node:os";
import { float32ArrayToFloat16Bits } from "./float16.js";

export const GGUF_MAGIC = 0x46554747; // "GGUF" read as a little-endian u32
export const GGUF_DEFAULT_ALIGNMENT = 32;
/** ggml's GGML_MAX_NAME is 64 including the terminating NUL. */
export const GGUF_MAX_TENSOR_NAME_BYTES = 63;

export type GgufScalarType =
  | "uint8"
  | "int8"
  | "uint16"
  | "int16"
  | "uint32"
  | "int32"
  | "float32"
  | "bool"
  | "string"
  | "uint64"
  | "int64"
  | "float64";

export type GgufScalarValue = number | bigint | boolean | string;

export type GgufMetadataEntry =
  | { key: string; type: GgufScalarType; value: GgufScalarValue }
  | { key: string; type: "array"; itemType: GgufScalarType; value: readonly GgufScalarValue[] };

/** GGUF value type ids (gguf_type in ggml). */
export const GGUF_VALUE_TYPE_ID: Record<GgufScalarType | "array", number> = {
  uint8: 0,
  int8: 1,
  uint16: 2,
  int16: 3,
  uint32: 4,
  int32: 5,
  float32: 6,
  bool: 7,
  string: 8,
  array: 9,
  uint64: 10,
  int64: 11,
  float64: 12,
};

/** ggml tensor type ids for the types this writer produces. */
export const GGML_TYPE_ID = { F32: 0, F16: 1 } as const;
export type GgufTensorType = keyof typeof GGML_TYPE_ID;

export interface GgufTensorInput {
  name: string;
  /** PyTorch order (outermost first), e.g. [out, in] for a Linear weight. */
  shape: readonly number[];
  type: GgufTensorType;
  /** Row-major values, or a function producing them when the writer reaches this tensor. */
  data: Float32Array | (() => Float32Array | Promise<Float32Array>);
}

export interface GgufWriteInput {
  metadata: readonly GgufMetadataEntry[];
  tensors: readonly GgufTensorInput[];
}

export interface GgufWriteResult {
  bytes: number;
  alignment: number;
  /** File offset where the tensor data section starts. */
  dataOffset: number;
  tensors: Array<{ name: string; ne: number[]; type: GgufTensorType; fileOffset: number; bytes: number }>;
}

const scalar =
  (type: GgufScalarType) =>
  (key: string, value: GgufScalarValue): GgufMetadataEntry => ({ key, type, value });
const array =
  (itemType: GgufScalarType) =>
  (key: string, value: readonly GgufScalarValue[]): GgufMetadataEntry => ({
    key,
    type: "array",
    itemType,
    value,
  });

/** Metadata entry builders: `gguf.u32("clip.vision.block_count", 23)`, `gguf.arr.str("tokenizer.ggml.tokens", [...])`. */
export const gguf = {
  u8: scalar("uint8"),
  i8: scalar("int8"),
  u16: scalar("uint16"),
  i16: scalar("int16"),
  u32: scalar("uint32"),
  i32: scalar("int32"),
  f32: scalar("float32"),
  bool: scalar("bool"),
  str: scalar("string"),
  u64: scalar("uint64"),
  i64: scalar("int64"),
  f64: scalar("float64"),
  arr: {
    u8: array("uint8"),
    i8: array("int8"),
    u16: array("uint16"),
    i16: array("int16"),
    u32: array("uint32"),
    i32: array("int32"),
    f32: array("float32"),
    bool: array("bool"),
    str: array("string"),
    u64: array("uint64"),
    i64: array("int64"),
    f64: array("float64"),
  },
};

/** Growable little-endian byte builder for the header. */
class ByteSink {
  private buf = Buffer.alloc(4096);
  length = 0;

  private reserve(n: number): void {
    if (this.length + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.length + n) size *= 2;
    const next = Buffer.alloc(size);
    this.buf.copy(next, 0, 0, this.length);
    this.buf = next;
  }
  u8(v: number): void {
    this.reserve(1);
    this.buf.writeUInt8(v, this.length);
    this.length += 1;
  }
  i8(v: number): void {
    this.reserve(1);
    this.buf.writeInt8(v, this.length);
    this.length += 1;
  }
  u16(v: number): void {
    this.reserve(2);
    this.buf.writeUInt16LE(v, this.length);
    this.length += 2;
  }
  i16(v: number): void {
    this.reserve(2);
    this.buf.writeInt16LE(v, this.length);
    this.length += 2;
  }
  u32(v: number): void {
    this.reserve(4);
    this.buf.writeUInt32LE(v, this.length);
    this.length += 4;
  }
  i32(v: number): void {
    this.reserve(4);
    this.buf.writeInt32LE(v, this.length);
    this.length += 4;
  }
  f32(v: number): void {
    this.reserve(4);
    this.buf.writeFloatLE(v, this.length);
    this.length += 4;
  }
  f64(v: number): void {
    this.reserve(8);
    this.buf.writeDoubleLE(v, this.length);
    this.length += 8;
  }
  u64(v: number | bigint): void {
    this.reserve(8);
    this.buf.writeBigUInt64LE(BigInt(v), this.length);
    this.length += 8;
  }
  i64(v: number | bigint): void {
    this.reserve(8);
    this.buf.writeBigInt64LE(BigInt(v), this.length);
    this.length += 8;
  }
  str(s: string): void {
    const bytes = Buffer.from(s, "utf8");
    this.u64(bytes.length);
    this.reserve(bytes.length);
    bytes.copy(this.buf, this.length);
    this.length += bytes.length;
  }
  pad(alignment: number): void {
    const n = (alignment - (this.length % alignment)) % alignment;
    this.reserve(n);
    this.buf.fill(0, this.length, this.length + n);
    this.length += n;
  }
  bytes(): Buffer {
    return this.buf.subarray(0, this.length);
  }
}

function checkNumber(
  key: string,
  type: GgufScalarType,
  v: GgufScalarValue,
  min: number,
  max: number,
): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
    throw new TypeError(`GGUF metadata "${key}": ${String(v)} is not a valid ${type}`);
  }
  return v;
}

function writeScalar(sink: ByteSink, key: string, type: GgufScalarType, v: GgufScalarValue): void {
  switch (type) {
    case "uint8":
      return sink.u8(checkNumber(key, type, v, 0, 0xff));
    case "int8":
      return sink.i8(checkNumber(key, type, v, -0x80, 0x7f));
    case "uint16":
      return sink.u16(checkNumber(key, type, v, 0, 0xffff));
    case "int16":
      return sink.i16(checkNumber(key, type, v, -0x8000, 0x7fff));
    case "uint32":
      return sink.u32(checkNumber(key, type, v, 0, 0xffffffff));
    case "int32":
      return sink.i32(checkNumber(key, type, v, -0x80000000, 0x7fffffff));
    case "float32":
    case "float64":
      if (typeof v !== "number") throw new TypeError(`GGUF metadata "${key}": ${String(v)} is not a number`);
      return type === "float32" ? sink.f32(v) : sink.f64(v);
    case "bool":
      if (typeof v !== "boolean")
        throw new TypeError(`GGUF metadata "${key}": ${String(v)} is not a boolean`);
      return sink.u8(v ? 1 : 0);
    case "string":
      if (typeof v !== "string") throw new TypeError(`GGUF metadata "${key}": ${String(v)} is not a string`);
      return sink.str(v);
    case "uint64":
    case "int64": {
      if (typeof v !== "bigint" && (typeof v !== "number" || !Number.isSafeInteger(v))) {
        throw new TypeError(`GGUF metadata "${key}": ${String(v)} is not a valid ${type}`);
      }
      return type === "uint64" ? sink.u64(v) : sink.i64(v);
    }
    default:
      throw new TypeError(`GGUF metadata "${key}": unknown value type ${String(type)}`);
  }
}

function alignmentOf(metadata: readonly GgufMetadataEntry[]): number {
  const entry = metadata.find((m) => m.key === "general.alignment");
  if (!entry) return GGUF_DEFAULT_ALIGNMENT;
  const v = Number(entry.value);
  if (entry.type !== "uint32" || !Number.isInteger(v) || v <= 0 || (v & (v - 1)) !== 0) {
    throw new TypeError(`GGUF "general.alignment" must be a uint32 power of two, got ${String(entry.value)}`);
  }
  return v;
}

function tensorByteSize(type: GgufTensorType, elements: number): number {
  return elements * (type === "F16" ? 2 : 4);
}

const CHUNK_ELEMENTS = 1 << 20;

/**
 * Write a GGUF v3 file. The file appears at `path` only when complete (written to `path.partial`, then
 * renamed), so a crash never leaves a truncated model behind under the real name.
 */
export async function writeGgufFile(path: string, input: GgufWriteInput): Promise<GgufWriteResult> {
  if (endianness() !== "LE") throw new Error("GGUF writing needs a little-endian host");
  const { metadata, tensors } = input;
  const alignment = alignmentOf(metadata);

  const keys = new Set<string>();
  for (const m of metadata) {
    if (keys.has(m.key)) throw new TypeError(`GGUF metadata key "${m.key}" appears twice`);
    keys.add(m.key);
  }

  const header = new ByteSink();
  header.u32(GGUF_MAGIC);
  header.u32(3);
  header.u64(tensors.length);
  header.u64(metadata.length);
  for (const m of metadata) {
    header.str(m.key);
    header.u32(GGUF_VALUE_TYPE_ID[m.type]);
    if (m.type === "array") {
      if (!(m.itemType in GGUF_VALUE_TYPE_ID)) throw new TypeError(`GGUF metadata "${m.key}": bad item type`);
      header.u32(GGUF_VALUE_TYPE_ID[m.itemType]);
      header.u64(m.value.length);
      for (const v of m.value) writeScalar(header, m.key, m.itemType, v);
    } else {
      if (GGUF_VALUE_TYPE_ID[m.type] === undefined) {
        throw new TypeError(`GGUF metadata "${m.key}": unknown value type ${String(m.type)}`);
      }
      writeScalar(header, m.key, m.type, m.value);
    }
  }

  const names = new Set<string>();
  const layout: GgufWriteResult["tensors"] = [];
  let relOffset = 0;
  for (const t of tensors) {
    if (names.has(t.name)) throw new TypeError(`GGUF tensor "${t.name}" appears twice`);
    names.add(t.name);
    if (Buffer.byteLength(t.name, "utf8") > GGUF_MAX_TENSOR_NAME_BYTES) {
      throw new TypeError(`GGUF tensor name "${t.name}" is longer than ${GGUF_MAX_TENSOR_NAME_BYTES} bytes`);
    }
    if (!(t.type in GGML_TYPE_ID)) throw new TypeError(`GGUF tensor "${t.name}": unsupported type ${t.type}`);
    if (t.shape.length < 1 || t.shape.length > 4 || t.shape.some((d) => !Number.isSafeInteger(d) || d < 1)) {
      throw new TypeError(`GGUF tensor "${t.name}": shape [${t.shape.join(", ")}] is not 1-4 positive dims`);
    }
    const ne = [...t.shape].reverse();
    const elements = t.shape.reduce((a, b) => a * b, 1);
    if (t.data instanceof Float32Array && t.data.length !== elements) {
      throw new TypeError(
        `GGUF tensor "${t.name}": ${t.data.length} values for shape [${t.shape.join(", ")}] (${elements})`,
      );
    }
    header.str(t.name);
    header.u32(ne.length);
    for (const d of ne) header.u64(d);
    header.u32(GGML_TYPE_ID[t.type]);
    header.u64(relOffset);
    const bytes = tensorByteSize(t.type, elements);
    layout.push({ name: t.name, ne, type: t.type, fileOffset: relOffset, bytes });
    relOffset += bytes + ((alignment - (bytes % alignment)) % alignment);
  }
  header.pad(alignment);
  const dataOffset = header.length;
  for (const l of layout) l.fileOffset += dataOffset;

  const partial = `${path}.partial`;
  const fh = await open(partial, "w");
  let ok = false;
  try {
    let pos = 0;
    const write = async (buf: Uint8Array): Promise<void> => {
      let done = 0;
      while (done < buf.length) {
        const { bytesWritten } = await fh.write(buf, done, buf.length - done, pos);
        done += bytesWritten;
        pos += bytesWritten;
      }
    };
    await write(header.bytes());
    const halfChunk = new Uint16Array(CHUNK_ELEMENTS);
    const zeros = new Uint8Array(alignment);
    for (let i = 0; i < tensors.length; i++) {
      const t = tensors[i];
      const data = typeof t.data === "function" ? await t.data() : t.data;
      const elements = layout[i].bytes / (t.type === "F16" ? 2 : 4);
      if (!(data instanceof Float32Array) || data.length !== elements) {
        throw new TypeError(`GGUF tensor "${t.name}": data is not a Float32Array of ${elements} values`);
      }
      if (pos !== layout[i].fileOffset) throw new Error(`GGUF writer: offset drift at tensor "${t.name}"`);
      for (let start = 0; start < elements; start += CHUNK_ELEMENTS) {
        const part = data.subarray(start, Math.min(elements, start + CHUNK_ELEMENTS));
        if (t.type === "F32") {
          await write(new Uint8Array(part.buffer, part.byteOffset, part.byteLength));
        } else {
          const half = float32ArrayToFloat16Bits(part, halfChunk.subarray(0, part.length));
          await write(new Uint8Array(half.buffer, half.byteOffset, half.byteLength));
        }
      }
      const pad = (alignment - (layout[i].bytes % alignment)) % alignment;
      if (pad > 0) await write(zeros.subarray(0, pad));
    }
    ok = true;
    return { bytes: pos, alignment, dataOffset, tensors: layout };
  } finally {
    await fh.close();
    if (ok) await rename(partial, path);
    else await rm(partial, { force: true });
  }
}
