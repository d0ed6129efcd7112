/**
 * Projector model folder: `projector.onnx` (+ `projector.onnx.data` for big weights) and `manifest.json`
 * with kind "llava-projector".
 */
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdir, stat, writeFile } from "node:fs/promises";
import path from "node:path";
import type { ModelManifest } from "../common/manifest.js";
import { writeOnnxModel, type WeightPrecision } from "../common/onnx/index.js";
import { buildProjectorModel, PROJECTOR_INPUT, PROJECTOR_OUTPUT } from "./graph.js";
import type { ProjectorConfig } from "./projector.js";
import type { ProjectorWeights } from "./weights.js";

export const PROJECTOR_ONNX_FILE = "projector.onnx";

async function sha256File(file: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

/** Write a projector model folder; returns its manifest. */
export async function writeProjectorFolder(
  dir: string,
  weights: ProjectorWeights,
  options: { precision?: WeightPrecision; name?: string } = {},
): Promise<ModelManifest<ProjectorConfig>> {
  const precision = options.precision ?? "fp32";
  await mkdir(dir, { recursive: true });
  const files = await writeOnnxModel(
    buildProjectorModel(weights, { precision }),
    path.join(dir, PROJECTOR_ONNX_FILE),
  );
  let source: ModelManifest["source"];
  if (weights.source) {
    const s = await stat(weights.source.path);
    source = {
      path: path.resolve(weights.source.path),
      sha256: await sha256File(weights.source.path),
      bytes: s.size,
      format: weights.source.format,
    };
  }
  const manifest: ModelManifest<ProjectorConfig> = {
    kind: "llava-projector",
    formatVersion: 1,
    name: options.name ?? "llava-1.5-projector",
    createdAt: new Date().toISOString(),
    config: {
      inWidth: weights.inWidth,
      hiddenWidth: weights.hiddenWidth,
      outWidth: weights.outWidth,
      activation: "gelu_erf",
      input: PROJECTOR_INPUT,
      output: PROJECTOR_OUTPUT,
    },
    precision,
    files: files.map((f) => ({
      path: path.basename(f.path),
      bytes: f.bytes,
      sha256: f.sha256,
      role: f.role,
    })),
    ...(source ? { source } : {}),
  };
  await writeFile(path.join(dir, "manifest.json"), `${JSON.stringify(manifest, null, 2)}\n`);
  return manifest;
}
