/**
 * A model choice (preset, explicit files, engine settings) -> the paths and settings the pipeline
 * takes. Nothing given = the bundled default model.
 */
import path from "node:path";
import { RegionVqaError } from "../common/errors.js";
import type { OrtDevice } from "../common/ort/index.js";
import type { LlmGpu } from "../llm/index.js";
import { repoModelsDir } from "./paths.js";
import { resolveModelPreset } from "./resolve.js";

/** The bundled default model (a preset folder in the package's models/). */
export const DEFAULT_MODEL_DIR = path.join(repoModelsDir(), "shapes");

/**
 * Which model to serve or ask and how to run it: what `--model`/`--vision`/... flags, a config file
 * and `REGION_VQA_*` variables all produce. Unset = the pipeline's default; no paths = the bundled model.
 */
export interface ModelConfig {
  /** Preset name or preset folder (see `region-vqa models`); default: the bundled model. */
  preset?: string;
  /** Alpha-CLIP vision ONNX folder (overrides the preset; needs `llm` too). */
  vision?: string;
  /** Projector: mmproj GGUF, LLaVA checkpoint or projector folder. */
  projector?: string;
  /** LLM GGUF file. */
  llm?: string;
  /**
   * Segmenter folder (manifest kind `sam-segmenter`) that turns clicks into masks. Overrides the
   * preset's; unset = the preset's segmenter when one is installed, else none.
   */
  segmenter?: string;
  /**
   * CLIP text tower folder (manifest kind `clip-text`) for zero-shot region classification and text
   * embeddings. Overrides the preset's; unset = the preset's when it has one, else none.
   */
  text?: string;
  /** ONNX Runtime device for the vision encoder and projector. */
  device?: OrtDevice;
  /** llama.cpp backend (false = the CPU). */
  gpu?: LlmGpu;
  /** ONNX Runtime threads (unset: all cores). */
  visionThreads?: number;
  /** llama.cpp threads. */
  llmThreads?: number;
  /** LLM context positions per conversation. */
  contextSize?: number;
  /** Threads one imaging job (decode, preprocessing, masks) splits a large image across (default: visionThreads, else min(4, cores)). */
  imagingThreads?: number;
  /** Imaging jobs at once; more wait in order (default 2). */
  imagingJobs?: number;
  /** Most regions of several requests in one vision-encoder run (default 1 on the CPU = off, 16 on GPUs). */
  encoderBatchRegions?: number;
  /** How long a request reaching an idle encoder waits for others to batch with, in ms (default 0). */
  encoderBatchWaitMs?: number;
}

/** The model part of the pipeline's options. */
export interface ModelPipelineOptions
  extends Omit<ModelConfig, "preset" | "imagingThreads" | "imagingJobs" | "encoderBatchRegions" | "encoderBatchWaitMs"> {
  encoderBatch?: { maxRegions?: number; maxWaitMs?: number };
  vision: string;
  llm: string;
  /** Name shown to API clients. */
  modelId: string;
}

/** A model choice -> the model part of PipelineOptions. Explicit files win over a preset; nothing = bundled. */
export async function resolveModelOptions(model: ModelConfig): Promise<ModelPipelineOptions> {
  const batch = { maxRegions: model.encoderBatchRegions, maxWaitMs: model.encoderBatchWaitMs };
  const engine = {
    device: model.device,
    gpu: model.gpu,
    visionThreads: model.visionThreads,
    llmThreads: model.llmThreads,
    contextSize: model.contextSize,
    ...(batch.maxRegions !== undefined || batch.maxWaitMs !== undefined ? { encoderBatch: batch } : {}),
  };
  if (model.vision || model.llm) {
    if (!model.vision || !model.llm) {
      throw new RegionVqaError(
        "invalid_request",
        "give both --vision and --llm (and --projector unless the vision folder is fused)",
      );
    }
    return {
      ...engine,
      vision: model.vision,
      projector: model.projector,
      llm: model.llm,
      ...(model.segmenter ? { segmenter: model.segmenter } : {}),
      ...(model.text ? { text: model.text } : {}),
      modelId: path.basename(model.llm),
    };
  }
  const resolved = await resolveModelPreset(model.preset ?? DEFAULT_MODEL_DIR);
  const segmenter = model.segmenter ?? resolved.segmenterDir;
  const text = model.text ?? resolved.textDir;
  return {
    ...engine,
    vision: resolved.visionDir,
    projector: model.projector ?? resolved.projectorPath,
    llm: resolved.llmPath,
    ...(segmenter ? { segmenter } : {}),
    ...(text ? { text } : {}),
    // A folder is named by its last path part, never by its full path (it shows in /v1/models).
    modelId: model.preset ? path.basename(path.resolve(model.preset)) : "shapes",
  };
}
