/**
 * Reads safetensors files: an 8-byte little-endian header length, a JSON header mapping names to
 * {dtype, shape, data_offsets}, then the raw data. Tensors are read by offset on demand.
 */
import fs from "node:fs";
import { RegionVqaError } from "../../common/errors.js";
import { DTYPE_BYTES, decodeToFloat32, missingKey, type StateDict, type StoredDType } from "./state-dict.js";

interface HeaderEntry {
  dtype: StoredDType;
  shape: number[];
  begin: number;
  end: number;
}

function invalid(file: string, why: string): RegionVqaError {
  return new RegionVqaError("checkpoint_invalid", `${file}: ${why}`, { path: file });
}

/** Whether the first bytes look like a safetensors header (length, then "{"). */
export function looksLikeSafetensors(head: Buffer, fileSize: number): boolean {
  if (head.length < 9) return false;
  const n = head.readBigUInt64LE(0);
  return n > 1n && n < BigInt(Math.min(fileSize, 100 * 1024 * 1024)) && head[8] === 0x7b;
}

export function openSafetensors(file: string): StateDict {
  const fd = fs.openSync(file, "r");
  try {
    return readSafetensors(file, fd);
  } catch (err) {
    fs.closeSync(fd);
    throw err;
  }
}

function readExact(file: string, fd: number, position: number, length: number): Buffer {
  const buf = Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    const n = fs.readSync(fd, buf, done, Math.min(length - done, 1 << 30), position + done);
    if (n === 0) throw invalid(file, "file is truncated");
    done += n;
  }
  return buf;
}

function readSafetensors(file: string, fd: number): StateDict {
  const fileSize = fs.fstatSync(fd).size;
  const headerLength = Number(readExact(file, fd, 0, 8).readBigUInt64LE(0));
  if (headerLength + 8 > fileSize) throw invalid(file, "safetensors header is longer than the file");
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(readExact(file, fd, 8, headerLength).toString("utf8"));
  } catch {
    throw invalid(file, "safetensors header is not valid JSON");
  }
  const dataStart = 8 + headerLength;
  const tensors = new Map<string, HeaderEntry>();
  for (const [name, value] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const v = value as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    const dtype = v.dtype as StoredDType;
    const shape = v.shape;
    const offsets = v.data_offsets;
    if (
      !(typeof dtype === "string" && dtype in DTYPE_BYTES) ||
      !Array.isArray(shape) ||
      !shape.every((d) => Number.isInteger(d) && d >= 0) ||
      !Array.isArray(offsets) ||
      offsets.length !== 2
    ) {
      throw invalid(
        file,
        `safetensors entry "${name}" is malformed or has an unsupported dtype (${String(v.dtype)})`,
      );
    }
    const [begin, end] = offsets as number[];
    const count = (shape as number[]).reduce((a, b) => a * b, 1);
    if (end - begin !== count * DTYPE_BYTES[dtype] || begin < 0 || dataStart + end > fileSize) {
      throw invalid(file, `safetensors entry "${name}" has bad data offsets (or the file is truncated)`);
    }
    tensors.set(name.startsWith("module.") ? name.slice("module.".length) : name, {
      dtype,
      shape: shape as number[],
      begin,
      end,
    });
  }
  const get = (key: string) => {
    const t = tensors.get(key);
    if (!t) throw missingKey(key);
    return t;
  };
  return {
    keys: () => [...tensors.keys()],
    has: (key) => tensors.has(key),
    info: (key) => ({ dtype: get(key).dtype, shape: [...get(key).shape] }),
    read: (key) => {
      const t = get(key);
      const count = t.shape.reduce((a, b) => a * b, 1);
      return decodeToFloat32(t.dtype, readExact(file, fd, dataStart + t.begin, t.end - t.begin), count);
    },
    close: () => fs.closeSync(fd),
    source: { path: file, format: "safetensors" },
    locate: (key) => ({ kind: "bytes", start: dataStart + get(key).begin, end: dataStart + get(key).end }),
  };
}
