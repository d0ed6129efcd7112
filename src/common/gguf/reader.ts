/**
 * Small GGUF reading helpers on top of node-llama-cpp's own parser (`readGgufFileInfo`): it reads the
 * header (metadata + tensor infos with file-relative offsets); this module reads single tensors' bytes by
 * offset, so a 600 MB mmproj file costs only the bytes of the tensors actually needed.
 */
import { open, stat } from "node:fs/promises";
import { endianness } from "node:os";
import { readGgufFileInfo } from "node-llama-cpp";
import { RegionVqaError } from "../errors.js";
import { float16BitsToFloat32Array } from "./float16.js";

/** ggml type ids this module can decode to float32. */
const DECODABLE: Record<number, { name: string; bytes: number }> = {
  0: { name: "F32", bytes: 4 },
  1: { name: "F16", bytes: 2 },
  30: { name: "BF16", bytes: 2 },
};

export interface GgufTensorRef {
  name: string;
  /** ggml order (innermost first). */
  ne: number[];
  /** PyTorch order (outermost first) = ne reversed. */
  shape: number[];
  ggmlType: number;
  /** Absolute offset of the tensor's first byte in the file. */
  fileOffset: number;
  /** Byte size when the type is decodable here; undefined for quantized types. */
  bytes?: number;
}

export interface GgufFile {
  path: string;
  fileSize: number;
  version: number;
  /** Nested metadata object as node-llama-cpp parses it (`general.architecture` -> metadata.general.architecture). */
  metadata: Record<string, unknown>;
  tensors: Map<string, GgufTensorRef>;
  /** Number of tensor-data bytes read so far through `readTensor`. */
  readonly tensorBytesRead: number;
  readTensor(name: string): Promise<Float32Array>;
}

/** Look up a dotted GGUF key ("clip.projector_type") in node-llama-cpp's nested metadata. */
export function ggufMetadataValue(metadata: Record<string, unknown>, key: string): unknown {
  let node: unknown = metadata;
  for (const part of key.split(".")) {
    if (node === null || typeof node !== "object" || !(part in node)) return undefined;
    node = (node as Record<string, unknown>)[part];
  }
  return node;
}

function toSafeNumber(v: number | bigint, what: string, path: string): number {
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 0) {
    throw new RegionVqaError("model_invalid", `GGUF file ${path}: ${what} ${String(v)} is out of range`);
  }
  return n;
}

/** Parse a GGUF file's header. Missing file -> model_not_found; anything unparsable -> model_invalid. */
export async function openGgufFile(path: string): Promise<GgufFile> {
  let fileSize: number;
  try {
    const s = await stat(path);
    if (!s.isFile()) throw new RegionVqaError("model_not_found", `${path} is not a file`);
    fileSize = s.size;
  } catch (err) {
    if (err instanceof RegionVqaError) throw err;
    throw new RegionVqaError("model_not_found", `GGUF file not found: ${path}`, { path });
  }
  const fh = await open(path, "r");
  try {
    const magic = Buffer.alloc(4);
    await fh.read(magic, 0, 4, 0);
    if (fileSize < 24 || magic.toString("latin1") !== "GGUF") {
      throw new RegionVqaError("model_invalid", `${path} is not a GGUF file (no "GGUF" magic at the start)`, {
        path,
      });
    }
  } finally {
    await fh.close();
  }

  let info: Awaited<ReturnType<typeof readGgufFileInfo>>;
  try {
    info = await readGgufFileInfo(path, {
      readTensorInfo: true,
      sourceType: "filesystem",
      logWarnings: false,
      spliceSplitFiles: false,
    });
  } catch (err) {
    throw new RegionVqaError(
      "model_invalid",
      `GGUF file ${path} has an unreadable header (truncated or corrupt): ${(err as Error).message}`,
      { path },
    );
  }

  const tensors = new Map<string, GgufTensorRef>();
  for (const t of info.fullTensorInfo ?? info.tensorInfo ?? []) {
    const ne = t.dimensions.map((d) => toSafeNumber(d, `dimension of ${t.name}`, path));
    const fileOffset = toSafeNumber(t.fileOffset, `offset of ${t.name}`, path);
    const kind = DECODABLE[t.ggmlType];
    const bytes = kind ? ne.reduce((a, b) => a * b, 1) * kind.bytes : undefined;
    if (bytes !== undefined && fileOffset + bytes > fileSize) {
      throw new RegionVqaError(
        "model_invalid",
        `GGUF file ${path} is truncated: tensor "${t.name}" needs bytes ${fileOffset}..${fileOffset + bytes} ` +
          `but the file has ${fileSize}`,
        { path, tensor: t.name },
      );
    }
    tensors.set(t.name, {
      name: t.name,
      ne,
      shape: [...ne].reverse(),
      ggmlType: t.ggmlType,
      fileOffset,
      bytes,
    });
  }

  let tensorBytesRead = 0;
  return {
    path,
    fileSize,
    version: info.version,
    metadata: info.metadata as unknown as Record<string, unknown>,
    tensors,
    get tensorBytesRead() {
      return tensorBytesRead;
    },
    async readTensor(name: string): Promise<Float32Array> {
      const ref = tensors.get(name);
      if (!ref)
        throw new RegionVqaError("model_invalid", `GGUF file ${path} has no tensor "${name}"`, { path });
      const kind = DECODABLE[ref.ggmlType];
      if (!kind || ref.bytes === undefined) {
        throw new RegionVqaError(
          "model_invalid",
          `GGUF tensor "${name}" in ${path} has ggml type ${ref.ggmlType}; only F32, F16 and BF16 are supported here`,
          { path, tensor: name },
        );
      }
      if (endianness() !== "LE") throw new Error("GGUF reading needs a little-endian host");
      const raw = Buffer.alloc(ref.bytes);
      const h = await open(path, "r");
      try {
        let done = 0;
        while (done < raw.length) {
          const { bytesRead } = await h.read(raw, done, raw.length - done, ref.fileOffset + done);
          if (bytesRead === 0) {
            throw new RegionVqaError(
              "model_invalid",
              `GGUF file ${path} is truncated inside tensor "${name}"`,
              {
                path,
              },
            );
          }
          done += bytesRead;
        }
      } finally {
        await h.close();
      }
      tensorBytesRead += ref.bytes;
      // Copy into fresh typed arrays: a Buffer's byteOffset need not be a multiple of 4.
      const count = ref.bytes / kind.bytes;
      if (ref.ggmlType === 0) {
        const out = new Float32Array(count);
        new Uint8Array(out.buffer).set(raw);
        return out;
      }
      const halves = new Uint16Array(count);
      new Uint8Array(halves.buffer).set(raw);
      if (ref.ggmlType === 1) return float16BitsToFloat32Array(halves);
      const out = new Float32Array(count);
      const bits = new Uint32Array(out.buffer);
      for (let i = 0; i < count; i++) bits[i] = halves[i] << 16;
      return out;
    },
  };
}
