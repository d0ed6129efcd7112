/** Writes a segmenter folder (two ONNX graphs + manifest.json) from a miniature SAM's weights. */
import { writeFile } from "node:fs/promises";
import path from "node:path";
import type { ModelManifest } from "../common/manifest.js";
import { writeOnnxModel } from "../common/onnx/index.js";
import {
  buildMiniSamDecoder,
  buildMiniSamEncoder,
  miniSamConfig,
  type MiniSamArchitecture,
} from "./mini-sam-graph.js";
import { SEGMENTER_KIND } from "./segmenter.js";
import type { SegmenterConfig } from "./types.js";
import type { StateDict } from "../vision/checkpoint/index.js";

export interface WriteMiniSamOptions {
  name: string;
  description?: string;
  licence?: string;
  source?: ModelManifest["source"];
}

export async function writeMiniSamFolder(
  dir: string,
  arch: MiniSamArchitecture,
  weights: Pick<StateDict, "read" | "info">,
  options: WriteMiniSamOptions,
): Promise<ModelManifest<SegmenterConfig>> {
  const config = miniSamConfig(arch);
  // Small graphs stay one self-contained file each; large ones put their weights next to them.
  const write = (model: ReturnType<typeof buildMiniSamEncoder>, file: string) =>
    writeOnnxModel(model, path.join(dir, file), { externalDataThresholdBytes: 16 * 1024 * 1024 });
  const files = [
    ...(await write(buildMiniSamEncoder(arch, weights), config.encoder)),
    ...(await write(buildMiniSamDecoder(arch, weights), config.decoder)),
  ];
  const manifest: ModelManifest<SegmenterConfig> = {
    kind: SEGMENTER_KIND,
    formatVersion: 1,
    name: options.name,
    createdAt: new Date().toISOString(),
    config,
    precision: "fp32",
    files: files.map((f) => ({
      path: path.relative(dir, f.path),
      role: f.role,
      bytes: f.bytes,
      sha256: f.sha256,
    })),
    ...(options.description ? { description: options.description } : {}),
    ...(options.licence ? { licence: options.licence } : {}),
    ...(options.source ? { source: options.source } : {}),
  };
  await writeFile(path.join(dir, "manifest.json"), JSON.stringify(manifest, null, 2) + "\n");
  return manifest;
}
