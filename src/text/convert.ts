/**
 * CLIP text checkpoints -> model folders: `model.onnx` (+ `model.onnx.data`) + `manifest.json` (kind
 * "clip-text"). Reads OpenAI state dicts (torch.save, whole CLIP or text only), the parameters of
 * OpenAI's TorchScript `.pt` files, and Hugging Face CLIP checkpoints (pytorch_model.bin or
 * model.safetensors). After writing the ONNX files the model is run on two prompts and compared with
 * an independent float64 forward pass; manifest.json is written last, only when that check passes.
 */
import fs from "node:fs/promises";
import path from "node:path";
import { RegionVqaError } from "../common/errors.js";
import { manifestFiles, writeJsonAtomically } from "../common/manifest.js";
import { OnnxGraphBuilder, writeOnnxModel, type WeightPrecision } from "../common/onnx/index.js";
import { OnnxSession } from "../common/ort/index.js";
import { openStateDict, type StateDict } from "../vision/checkpoint/index.js";
import { checkpointSource, conversionError, type Logger } from "../vision/convert/index.js";
import { inspectClipTextStateDict, type ClipTextConfig, type ClipTextLayout } from "./config.js";
import { CLIP_TEXT_MODEL_KIND, type ClipTextManifest, type ClipTextManifestConfig } from "./encoder.js";
import { clipTextFeaturesReference, eotIndex } from "./reference.js";
import {
  appendClipTextNodes,
  INPUT_IDS_INPUT,
  LAST_HIDDEN_STATE_OUTPUT,
  TEXT_EMBEDS_OUTPUT,
} from "./text-graph.js";
import { EOT_TOKEN_ID, SOT_TOKEN_ID } from "./token-ids.js";
import { ALPHA_CLIP_ZERO_SHOT_SCALE, ZERO_SHOT_TEMPLATE } from "./zero-shot.js";

export const TEXT_ONNX_FILE = "model.onnx";

/**
 * Largest |ONNX - float64 reference| allowed by the self-check, relative to max(1, largest |feature|).
 * fp32 measures about 1e-6 on the tiny golden; fp16 weights add their rounding.
 */
export const SELF_CHECK_TOLERANCE: Record<WeightPrecision, number> = { fp32: 1e-4, fp16: 2e-2 };

export interface WriteClipTextFolderOptions {
  precision?: WeightPrecision;
  name?: string;
  source?: ClipTextManifest["source"];
  sourceLayout?: ClipTextLayout;
  /** exp(logit_scale), recorded in the manifest. */
  logitScale?: number;
  /** Run the self-check before writing manifest.json (default true). */
  selfCheck?: boolean;
  /** Weights at least this big go to model.onnx.data (default 1024 bytes). */
  externalDataThresholdBytes?: number;
  logger?: Logger;
}

export interface SelfCheckResult {
  /** Token ids of the checked rows (each cut after its EOT). */
  prompts: number[][];
  maxAbsDiff: number;
  /** The allowed max abs difference. */
  tolerance: number;
}

/**
 * Two check rows: "a photo of a cat." and the empty prompt in CLIP's real vocabulary; for other
 * vocabularies, short rows whose last id is the largest.
 */
function selfCheckRows(config: ClipTextConfig): number[][] {
  const { vocabSize: V, contextLength: T } = config;
  const rows =
    V === EOT_TOKEN_ID + 1
      ? [
          [SOT_TOKEN_ID, 320, 1125, 539, 320, 2368, 269, EOT_TOKEN_ID],
          [SOT_TOKEN_ID, EOT_TOKEN_ID],
        ]
      : [[1, 2, 3, 4, 5, 6, V - 1].map((v) => Math.min(v, V - 1)), [Math.min(1, V - 1), V - 1]];
  return rows.map((r) => r.slice(0, T));
}

/** Run the written model on the check rows (padded to the context length) and compare. */
async function selfCheck(
  onnxPath: string,
  sd: StateDict,
  config: ClipTextConfig,
  precision: WeightPrecision,
): Promise<SelfCheckResult> {
  const rows = selfCheckRows(config);
  const T = config.contextLength;
  const ids = new BigInt64Array(rows.length * T);
  rows.forEach((r, i) => r.forEach((v, j) => (ids[i * T + j] = BigInt(v))));
  const session = await OnnxSession.open(onnxPath, {
    label: "text encoder self-check",
    device: "cpu",
    threads: 2,
    inWorker: false,
  });
  let onnxOut: Float32Array;
  try {
    const out = await session.run({ [INPUT_IDS_INPUT]: { data: ids, dims: [rows.length, T] } });
    onnxOut = out[TEXT_EMBEDS_OUTPUT].data as Float32Array;
  } finally {
    await session.dispose();
  }
  const reference = clipTextFeaturesReference(sd, config, rows);
  let maxAbsDiff = 0;
  let scale = 1;
  reference.forEach((ref, i) =>
    ref.forEach((v, d) => {
      scale = Math.max(scale, Math.abs(v));
      const diff = Math.abs(v - onnxOut[i * config.embedDim + d]);
      maxAbsDiff = Number.isNaN(diff) ? Infinity : Math.max(maxAbsDiff, diff);
    }),
  );
  return {
    prompts: rows.map((r) => r.slice(0, eotIndex(r) + 1)),
    maxAbsDiff,
    tolerance: SELF_CHECK_TOLERANCE[precision] * scale,
  };
}

/**
 * Write a model folder from a state dict under the canonical names of `inspectClipTextStateDict`
 * (which also gives `config`).
 */
export async function writeClipTextModelFolder(
  stateDict: StateDict,
  config: ClipTextConfig,
  outDir: string,
  options: WriteClipTextFolderOptions = {},
): Promise<ClipTextManifest> {
  const precision = options.precision ?? "fp32";
  const g = new OnnxGraphBuilder({ graphName: "clip_text" });
  const values = appendClipTextNodes(g, stateDict, config, { precision });
  const { width: W, embedDim: D } = config;
  g.output(TEXT_EMBEDS_OUTPUT, "float32", ["batch", D], values.textEmbeds);
  g.output(LAST_HIDDEN_STATE_OUTPUT, "float32", ["batch", "sequence", W], values.lastHiddenState);

  await fs.mkdir(outDir, { recursive: true });
  // A folder is a model only once manifest.json exists: drop an old one before rewriting the files.
  await fs.rm(path.join(outDir, "manifest.json"), { force: true });
  const onnxPath = path.join(outDir, TEXT_ONNX_FILE);
  const files = await writeOnnxModel(
    g.toModel({
      docString: "CLIP text encoder (region-vqa convert-text)",
      metadata: Object.fromEntries(Object.entries(config).map(([k, v]) => [k, String(v)])),
    }),
    onnxPath,
    { externalDataThresholdBytes: options.externalDataThresholdBytes },
  );

  let check: SelfCheckResult | undefined;
  if (options.selfCheck ?? true) {
    check = await selfCheck(onnxPath, stateDict, config, precision);
    const line = `self-check: max |onnx - float64 reference| = ${check.maxAbsDiff.toExponential(2)} (tolerance ${check.tolerance.toExponential(2)})`;
    if (!(check.maxAbsDiff <= check.tolerance)) {
      throw new RegionVqaError(
        "internal",
        `${outDir}: the converted text encoder disagrees with the reference forward pass (${line}); no manifest written`,
      );
    }
    options.logger?.info(line);
  }

  const manifestConfig: ClipTextManifestConfig = {
    ...config,
    logitScale: options.logitScale ?? null,
    zeroShotScale: ALPHA_CLIP_ZERO_SHOT_SCALE,
    zeroShotTemplate: ZERO_SHOT_TEMPLATE,
    sourceLayout: options.sourceLayout ?? "openai",
    inputs: { inputIds: INPUT_IDS_INPUT },
    outputs: [TEXT_EMBEDS_OUTPUT, LAST_HIDDEN_STATE_OUTPUT],
  };
  const manifest: ClipTextManifest = {
    kind: CLIP_TEXT_MODEL_KIND,
    formatVersion: 1,
    name: options.name ?? path.basename(path.resolve(outDir)),
    createdAt: new Date().toISOString(),
    config: manifestConfig,
    precision,
    files: manifestFiles(files),
    ...(options.source ? { source: options.source } : {}),
    ...(check ? { selfCheck: check } : {}),
  };
  await writeJsonAtomically(path.join(outDir, "manifest.json"), manifest);
  return manifest;
}

export interface ConvertTextOptions {
  checkpoint: string;
  out: string;
  /** Attention heads; default width / 64 (CLIP's convention). */
  heads?: number;
  precision?: WeightPrecision;
  name?: string;
  /** Default true. */
  selfCheck?: boolean;
  logger?: Logger;
  /**
   * Recorded as the manifest's `source` instead of the checkpoint's path, size and sha256 (which reads
   * the whole file); `false` records none: for a working file that is not the published checkpoint,
   * e.g. the sparse file of a ranged download that holds only the text tower's bytes.
   */
  source?: ClipTextManifest["source"] | false;
  /** Read the checkpoint through this view (e.g. one that refuses tensors that were never downloaded). */
  view?: (opened: StateDict) => StateDict;
}

/** Convert a CLIP text checkpoint (any supported layout) into a model folder. */
export async function convertTextCheckpoint(options: ConvertTextOptions): Promise<ClipTextManifest> {
  const logger = options.logger;
  const started = Date.now();
  const opened = openStateDict(options.checkpoint);
  try {
    const viewed = options.view ? options.view(opened) : opened;
    const inspected = inspectClipTextStateDict(viewed, { heads: options.heads });
    for (const w of inspected.warnings) logger?.warn(w);
    const c = inspected.config;
    logger?.info(
      `checkpoint ${opened.source.format} (${inspected.layout} names): width ${c.width}, ${c.layers} layers, ` +
        `${c.heads} heads, context ${c.contextLength}, vocabulary ${c.vocabSize}, output ${c.embedDim}`,
    );
    const manifest = await writeClipTextModelFolder(inspected.stateDict, c, options.out, {
      precision: options.precision,
      name: options.name,
      sourceLayout: inspected.layout,
      logitScale: inspected.logitScale,
      selfCheck: options.selfCheck,
      logger,
      source:
        options.source === false
          ? undefined
          : (options.source ?? (await checkpointSource(options.checkpoint, opened.source.format))),
    });
    logger?.info(`wrote ${options.out} in ${((Date.now() - started) / 1000).toFixed(1)} s`);
    return manifest;
  } catch (err) {
    throw conversionError(err, options.out);
  } finally {
    opened.close();
  }
}
