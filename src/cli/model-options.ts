import path from "node:path";
import { Command, Option } from "commander";
import { RegionVqaError } from "../common/errors.js";
import { repoModelsDir, resolveModelPreset } from "../models/index.js";
import type { PipelineOptions } from "../pipeline/index.js";
import { numberFlag } from "./number-flag.js";

const positiveInteger = { min: 1, integer: true };

/** The bundled default model (a preset folder in the package's models/). */
export const DEFAULT_MODEL_DIR = path.join(repoModelsDir(), "shapes");

export interface ModelCliOptions {
  model?: string;
  vision?: string;
  projector?: string;
  llm?: string;
  device?: "auto" | "cuda" | "cpu";
  gpu?: string;
  threads?: string;
  llmThreads?: string;
  contextSize?: string;
}

/** Adds the model-selection and engine flags shared by `ask`, `serve` and `eval-shapes`. */
export function addModelOptions(cmd: Command): Command {
  return cmd
    .option(
      "--model <name|dir>",
      "model preset name (e.g. alpha-llava-7b) or preset folder; default: the bundled model",
    )
    .option("--vision <dir>", "Alpha-CLIP model folder (convert-vision output; overrides --model)")
    .option("--projector <file>", "projector: mmproj GGUF, LLaVA checkpoint or projector folder")
    .option("--llm <file>", "LLM GGUF file")
    .addOption(
      new Option("--device <device>", "ONNX Runtime device for vision")
        .choices(["auto", "cuda", "cpu"])
        .default("auto"),
    )
    .addOption(
      new Option("--gpu <gpu>", "llama.cpp backend")
        .choices(["false", "auto", "cuda", "vulkan"])
        .default("false"),
    )
    .option("--threads <n>", "ONNX Runtime threads (default: all cores)")
    .option("--llm-threads <n>", "llama.cpp threads (default 1; more only on a machine with idle cores)")
    .option("--context-size <n>", "LLM context positions per conversation");
}

/** Flags -> the model part of PipelineOptions. Explicit files win over --model; nothing given = bundled model. */
export async function resolveModelOptions(
  opts: ModelCliOptions,
): Promise<
  Pick<
    PipelineOptions,
    | "vision"
    | "projector"
    | "llm"
    | "modelId"
    | "device"
    | "gpu"
    | "visionThreads"
    | "llmThreads"
    | "contextSize"
  >
> {
  const engine = {
    device: opts.device ?? "auto",
    gpu:
      opts.gpu === undefined || opts.gpu === "false"
        ? (false as const)
        : (opts.gpu as "auto" | "cuda" | "vulkan"),
    visionThreads: numberFlag(opts.threads, "--threads", positiveInteger),
    llmThreads: numberFlag(opts.llmThreads, "--llm-threads", positiveInteger),
    contextSize: numberFlag(opts.contextSize, "--context-size", positiveInteger),
  };
  if (opts.vision || opts.llm) {
    if (!opts.vision || !opts.llm) {
      throw new RegionVqaError(
        "invalid_request",
        "give both --vision and --llm (and --projector unless the vision folder is fused)",
      );
    }
    return {
      ...engine,
      vision: opts.vision,
      projector: opts.projector,
      llm: opts.llm,
      modelId: path.basename(opts.llm),
    };
  }
  const name = opts.model ?? DEFAULT_MODEL_DIR;
  const resolved = await resolveModelPreset(name);
  return {
    ...engine,
    vision: resolved.visionDir,
    projector: opts.projector ?? resolved.projectorPath,
    llm: resolved.llmPath,
    // A folder is named by its last path part, never by its full path (it shows in /v1/models).
    modelId: opts.model ? path.basename(path.resolve(opts.model)) : "shapes",
  };
}
