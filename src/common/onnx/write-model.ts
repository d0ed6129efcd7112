/**
 * Writing ONNX models to disk. Large initializers go to one external-data file `<model>.data`
 * (ONNX Runtime resolves it relative to the .onnx file when the model is loaded by path), so the
 * protobuf part stays small and models over 2 GB work.
 */
import { createHash } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import type { OnnxModel } from "./graph-builder.js";
import { onnx } from "./proto.js";

export interface WriteOnnxOptions {
  /**
   * Initializers of at least this many bytes go to the external-data file; smaller ones stay inline.
   * `Infinity` writes one self-contained file (only possible under protobuf's 2 GB limit).
   * Default 1024.
   */
  externalDataThresholdBytes?: number;
  /** Byte alignment of each tensor inside the data file (default 64). */
  alignment?: number;
}

export interface WrittenOnnxFile {
  path: string;
  bytes: number;
  sha256: string;
  role: "onnx" | "onnx-data";
}

/** Encode a model with every initializer inline (for small models, e.g. loading from a buffer). */
export function encodeOnnxModel(model: OnnxModel): Uint8Array {
  const byName = new Map(model.initializers.map((i) => [i.name, i]));
  const graph = model.proto.graph ?? {};
  const proto: onnx.IModelProto = {
    ...model.proto,
    graph: {
      ...graph,
      initializer: (graph.initializer ?? []).map((t) => ({ ...t, rawData: byName.get(t.name ?? "")?.bytes })),
    },
  };
  return onnx.ModelProto.encode(proto).finish();
}

/**
 * Write `model` to `onnxPath` (and `onnxPath + ".data"` when any initializer is external). Files are
 * written under temporary names and renamed at the end, so a failed write leaves no half model.
 * Returns the written files with sizes and sha256 digests.
 */
export async function writeOnnxModel(
  model: OnnxModel,
  onnxPath: string,
  options: WriteOnnxOptions = {},
): Promise<WrittenOnnxFile[]> {
  const threshold = options.externalDataThresholdBytes ?? 1024;
  const alignment = options.alignment ?? 64;
  const dataName = `${path.basename(onnxPath)}.data`;
  const dataPath = path.join(path.dirname(onnxPath), dataName);
  const byName = new Map(model.initializers.map((i) => [i.name, i]));

  const external = model.initializers.filter((i) => i.bytes.byteLength >= threshold);
  const externalInfo = new Map<string, { offset: number; length: number }>();
  const written: WrittenOnnxFile[] = [];
  await fs.promises.mkdir(path.dirname(onnxPath), { recursive: true });

  if (external.length > 0) {
    const tmp = `${dataPath}.partial`;
    const fh = await fs.promises.open(tmp, "w");
    const hash = createHash("sha256");
    let offset = 0;
    try {
      for (const init of external) {
        const pad = (alignment - (offset % alignment)) % alignment;
        if (pad > 0) {
          const zeros = new Uint8Array(pad);
          await fh.write(zeros);
          hash.update(zeros);
          offset += pad;
        }
        externalInfo.set(init.name, { offset, length: init.bytes.byteLength });
        // Write in bounded chunks: one write call per multi-GB tensor is not portable.
        for (let pos = 0; pos < init.bytes.byteLength; pos += 1 << 28) {
          const chunk = init.bytes.subarray(pos, Math.min(init.bytes.byteLength, pos + (1 << 28)));
          await fh.write(chunk);
          hash.update(chunk);
        }
        offset += init.bytes.byteLength;
      }
    } finally {
      await fh.close();
    }
    await fs.promises.rename(tmp, dataPath);
    written.push({ path: dataPath, bytes: offset, sha256: hash.digest("hex"), role: "onnx-data" });
  } else {
    await fs.promises.rm(dataPath, { force: true });
  }

  const graph = model.proto.graph ?? {};
  const proto: onnx.IModelProto = {
    ...model.proto,
    graph: {
      ...graph,
      initializer: (graph.initializer ?? []).map((t) => {
        const name = t.name ?? "";
        const ext = externalInfo.get(name);
        if (ext) {
          return {
            ...t,
            dataLocation: onnx.TensorProto.DataLocation.EXTERNAL,
            externalData: [
              { key: "location", value: dataName },
              { key: "offset", value: String(ext.offset) },
              { key: "length", value: String(ext.length) },
            ],
          };
        }
        const init = byName.get(name);
        if (!init) throw new Error(`ONNX model: initializer ${name} has no data`);
        return { ...t, rawData: init.bytes };
      }),
    },
  };
  const encoded = onnx.ModelProto.encode(proto).finish();
  const tmp = `${onnxPath}.partial`;
  await fs.promises.writeFile(tmp, encoded);
  await fs.promises.rename(tmp, onnxPath);
  written.unshift({
    path: onnxPath,
    bytes: encoded.byteLength,
    sha256: createHash("sha256").update(encoded).digest("hex"),
    role: "onnx",
  });
  return written;
}
