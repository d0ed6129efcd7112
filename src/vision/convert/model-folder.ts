/**
 * Alpha-CLIP vision model folders: `model.onnx` + `model.onnx.data` + `manifest.json`
 * (kind "alpha-clip-vision"), written from a checkpoint file or from in-memory weights.
 */
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import fs from "node:fs/promises";
import path from "node:path";
import { RegionVqaError } from "../../common/errors.js";
import {
  manifestFiles,
  writeJsonAtomically,
  type ModelKind,
  type ModelManifest,
} from "../../common/manifest.js";
import { OnnxGraphBuilder, writeOnnxModel, type WeightPrecision } from "../../common/onnx/index.js";
import { openStateDict, type StateDict } from "../checkpoint/index.js";
import { inspectAlphaClipStateDict, type AlphaClipVisionConfig } from "./alpha-clip-config.js";
import {
  ALPHA_INPUT,
  appendAlphaClipVisionNodes,
  IMAGE_EMBED_OUTPUT,
  IMAGE_INPUT,
  LLAVA_FEATURES_OUTPUT,
  type AlphaClipGraphValues,
} from "./alpha-clip-graph.js";

export const VISION_ONNX_FILE = "model.onnx";

export interface VisionManifestConfig extends AlphaClipVisionConfig {
  inputs: { image: string; alpha: string };
  outputs: string[];
  [extra: string]: unknown;
}

export type AlphaClipVisionManifest = ModelManifest<VisionManifestConfig>;

export interface Logger {
  info(message: string): void;
  warn(message: string): void;
}

/**
 * Hook for graphs that continue after the encoder (e.g. a fused LLaVA projector). `extend` gets the
 * builder and the encoder's values and returns the outputs to declare instead of the default ones.
 */
export interface VisionGraphExtension {
  /** Manifest kind of the folder (default "alpha-clip-vision"). */
  kind?: ModelKind;
  /** Extra keys merged into manifest.config. */
  config?: Record<string, unknown>;
  /** Keep the last block, ln_post and proj (`image_embed`). Default true. */
  includeImageEmbed?: boolean;
  extend(
    g: OnnxGraphBuilder,
    values: AlphaClipGraphValues,
    info: { config: AlphaClipVisionConfig; precision: WeightPrecision },
  ): Array<{ name: string; value: string; shape: Array<number | string> }>;
}

export interface WriteVisionFolderOptions {
  precision?: WeightPrecision;
  name?: string;
  /** Recorded in the manifest (the converted checkpoint). */
  source?: ModelManifest["source"];
  /** Use an all-zero alpha conv (state dict without conv1_alpha). */
  zeroAlphaConv?: boolean;
  extension?: VisionGraphExtension;
  /** Weights at least this big go to model.onnx.data (default 1024 bytes). */
  externalDataThresholdBytes?: number;
}

/** sha256 of a file, streamed (never one buffer for a multi-GB file). */
export async function sha256File(file: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(file, { highWaterMark: 1 << 22 })) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

/** A converted folder's record of the checkpoint it came from: absolute path, sha256, size, format. */
export async function checkpointSource(
  file: string,
  format: string,
): Promise<{ path: string; sha256: string; bytes: number; format: string }> {
  const { size } = await fs.stat(file);
  return { path: path.resolve(file), sha256: await sha256File(file), bytes: size, format };
}

/**
 * What a converter reports when writing its folder failed: weights outside fp16's range are the
 * caller's choice of precision (`invalid_request`); a full or read-only disk is named; anything else
 * passes through.
 */
export function conversionError(err: unknown, out: string): unknown {
  if (err instanceof RegionVqaError) return err;
  if (err instanceof RangeError && /float16 range/.test(err.message)) {
    return new RegionVqaError("invalid_request", `cannot convert to fp16: ${err.message}`);
  }
  const e = err as NodeJS.ErrnoException;
  if (e.code === "ENOSPC" || e.code === "EACCES" || e.code === "EROFS") {
    return new RegionVqaError("internal", `cannot write model folder ${out}: ${e.message}`);
  }
  return err;
}

/**
 * Write a model folder from a state dict whose configuration is already known (use
 * `inspectAlphaClipStateDict` to get it). Works with lazily read checkpoints and with in-memory
 * weights (`inMemoryStateDict`), e.g. random weights for benchmarks.
 */
export async function writeAlphaClipModelFolder(
  stateDict: StateDict,
  config: AlphaClipVisionConfig,
  outDir: string,
  options: WriteVisionFolderOptions = {},
): Promise<AlphaClipVisionManifest> {
  const precision = options.precision ?? "fp32";
  const ext = options.extension;
  const includeImageEmbed = ext?.includeImageEmbed ?? true;
  const g = new OnnxGraphBuilder({ graphName: "alpha_clip_visual" });
  const values = appendAlphaClipVisionNodes(g, stateDict, config, {
    precision,
    includeImageEmbed,
    zeroAlphaConv: options.zeroAlphaConv,
  });
  const { width: W, gridSize: G, outputDim: D } = config;
  const outputs = ext
    ? ext.extend(g, values, { config, precision })
    : [
        { name: LLAVA_FEATURES_OUTPUT, value: values.llavaFeatures, shape: ["batch", G * G, W] },
        ...(values.imageEmbed
          ? [{ name: IMAGE_EMBED_OUTPUT, value: values.imageEmbed, shape: ["batch", D] }]
          : []),
      ];
  for (const o of outputs) g.output(o.name, "float32", o.shape, o.value);

  await fs.mkdir(outDir, { recursive: true });
  const files = await writeOnnxModel(
    g.toModel({
      docString: "Alpha-CLIP visual encoder (region-vqa convert-vision)",
      metadata: Object.fromEntries(Object.entries(config).map(([k, v]) => [k, String(v)])),
    }),
    path.join(outDir, VISION_ONNX_FILE),
    { externalDataThresholdBytes: options.externalDataThresholdBytes },
  );
  const manifest: AlphaClipVisionManifest = {
    kind: ext?.kind ?? "alpha-clip-vision",
    formatVersion: 1,
    name: options.name ?? path.basename(path.resolve(outDir)),
    createdAt: new Date().toISOString(),
    config: {
      ...config,
      inputs: { image: IMAGE_INPUT, alpha: ALPHA_INPUT },
      outputs: outputs.map((o) => o.name),
      ...(ext?.config ?? {}),
    },
    precision,
    files: manifestFiles(files),
    ...(options.source ? { source: options.source } : {}),
  };
  await writeJsonAtomically(path.join(outDir, "manifest.json"), manifest);
  return manifest;
}

export interface ConvertVisionOptions {
  checkpoint: string;
  out: string;
  /** Attention heads; default width / 64 (CLIP's convention). */
  heads?: number;
  precision?: WeightPrecision;
  name?: string;
  logger?: Logger;
  extension?: VisionGraphExtension;
}

/** Convert an Alpha-CLIP (or plain CLIP) visual checkpoint into a model folder. */
export async function convertVisionCheckpoint(
  options: ConvertVisionOptions,
): Promise<AlphaClipVisionManifest> {
  const logger = options.logger;
  const started = Date.now();
  const opened = openStateDict(options.checkpoint);
  try {
    const inspected = inspectAlphaClipStateDict(opened, { heads: options.heads });
    for (const w of inspected.warnings) logger?.warn(w);
    const c = inspected.config;
    logger?.info(
      `checkpoint ${opened.source.format}: width ${c.width}, ${c.layers} layers, ${c.heads} heads, patch ${c.patchSize}, ` +
        `image ${c.imageSize}, output ${c.outputDim}`,
    );
    const manifest = await writeAlphaClipModelFolder(inspected.stateDict, c, options.out, {
      precision: options.precision,
      name: options.name,
      zeroAlphaConv: !inspected.hasAlphaConv,
      extension: options.extension,
      source: await checkpointSource(options.checkpoint, opened.source.format),
    });
    logger?.info(`wrote ${options.out} in ${((Date.now() - started) / 1000).toFixed(1)} s`);
    return manifest;
  } catch (err) {
    throw conversionError(err, options.out);
  } finally {
    opened.close();
  }
}
