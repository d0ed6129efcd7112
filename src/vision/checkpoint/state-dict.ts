/** The common, format-independent view of a checkpoint: named tensors read lazily as float32. */
import { RegionVqaError } from "../../common/errors.js";
import { bfloat16ArrayToFloat32, float16ArrayToFloat32 } from "../../common/onnx/half.js";

/** Storage element types, in safetensors spelling. */
export type StoredDType = "F64" | "F32" | "F16" | "BF16" | "I64" | "I32" | "I16" | "I8" | "U8" | "BOOL";

export const DTYPE_BYTES: Record<StoredDType, number> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
};

export interface TensorInfo {
  dtype: StoredDType;
  shape: number[];
}

/**
 * Where a tensor's bytes sit in its file: a zip entry (a torch.save / TorchScript storage, possibly shared
 * with other tensors) or an absolute byte range (safetensors). Lets a downloader fetch only some tensors.
 */
export type TensorLocation =
  { kind: "zip-entry"; entry: string } | { kind: "bytes"; start: number; end: number };

export interface StateDict {
  /** Tensor names (after format-level normalisation such as removing a `module.` prefix). */
  keys(): string[];
  has(key: string): boolean;
  info(key: string): TensorInfo;
  /** The tensor's values as row-major float32 (read from disk on each call). */
  read(key: string): Float32Array;
  /** Release the file handle, if any. */
  close(): void;
  /** Where it came from and in which format ("pytorch-zip", "safetensors", "memory"). */
  readonly source: { path?: string; format: string };
  /** Where a tensor's bytes are in the file, for readers of files (absent for in-memory ones). */
  locate?(key: string): TensorLocation;
}

export function missingKey(key: string, where?: string): RegionVqaError {
  return new RegionVqaError(
    "checkpoint_invalid",
    `checkpoint has no tensor "${key}"${where ? ` (${where})` : ""}`,
    {
      key,
    },
  );
}

/** Decode little-endian stored values into float32. `bytes` must hold exactly `count` elements. */
export function decodeToFloat32(dtype: StoredDType, bytes: Uint8Array, count: number): Float32Array {
  const n = DTYPE_BYTES[dtype];
  if (bytes.byteLength !== count * n) throw new Error(`expected ${count * n} bytes, got ${bytes.byteLength}`);
  // Copy into a fresh, aligned buffer: file buffers may start at any byte offset.
  const aligned = new Uint8Array(bytes.byteLength);
  aligned.set(bytes);
  const buf = aligned.buffer;
  switch (dtype) {
    case "F32":
      return new Float32Array(buf);
    case "F16":
      return float16ArrayToFloat32(new Uint16Array(buf));
    case "BF16":
      return bfloat16ArrayToFloat32(new Uint16Array(buf));
    case "F64":
      return Float32Array.from(new Float64Array(buf));
    case "I64":
      return Float32Array.from(new BigInt64Array(buf), (v) => Number(v));
    case "I32":
      return Float32Array.from(new Int32Array(buf));
    case "I16":
      return Float32Array.from(new Int16Array(buf));
    case "I8":
      return Float32Array.from(new Int8Array(buf));
    case "U8":
    case "BOOL":
      return Float32Array.from(aligned);
  }
}

/** A state dict held in memory (used to build models from generated weights, e.g. benchmarks). */
export function inMemoryStateDict(
  tensors: Record<string, { shape: number[]; data: Float32Array }>,
): StateDict {
  const entries = new Map(Object.entries(tensors));
  for (const [key, t] of entries) {
    const count = t.shape.reduce((a, b) => a * b, 1);
    if (count !== t.data.length) {
      throw new RegionVqaError(
        "checkpoint_invalid",
        `tensor ${key}: ${t.data.length} values for shape [${t.shape}]`,
      );
    }
  }
  const get = (key: string) => {
    const t = entries.get(key);
    if (!t) throw missingKey(key);
    return t;
  };
  return {
    keys: () => [...entries.keys()],
    has: (key) => entries.has(key),
    info: (key) => ({ dtype: "F32", shape: [...get(key).shape] }),
    read: (key) => get(key).data,
    close: () => {},
    source: { format: "memory" },
  };
}

/**
 * A view of another state dict with renamed keys (e.g. `visual.conv1.weight` -> `conv1.weight`).
 * `rename` returns the new name, or undefined to hide a key.
 */
export function renameKeys(inner: StateDict, rename: (key: string) => string | undefined): StateDict {
  const map = new Map<string, string>();
  for (const k of inner.keys()) {
    const n = rename(k);
    if (n !== undefined && !map.has(n)) map.set(n, k);
  }
  const orig = (key: string) => {
    const o = map.get(key);
    if (o === undefined) throw missingKey(key);
    return o;
  };
  return {
    keys: () => [...map.keys()],
    has: (key) => map.has(key),
    info: (key) => inner.info(orig(key)),
    read: (key) => inner.read(orig(key)),
    close: () => inner.close(),
    source: inner.source,
    ...(inner.locate ? { locate: (key: string) => inner.locate!(orig(key)) } : {}),
  };
}
