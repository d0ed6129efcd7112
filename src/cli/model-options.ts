import { Command, Option } from "commander";
import { ImagingPool } from "../common/imaging/pool.js";
import { ORT_DEVICES } from "../common/ort/index.js";
import { LLM_GPUS } from "../llm/index.js";
import type { ModelConfig } from "../models/index.js";
import { numberFlag } from "./number-flag.js";

const positiveInteger = { min: 1, integer: true };

/** The model flags as commander hands them over (text). */
export interface ModelCliOptions {
  model?: string;
  vision?: string;
  projector?: string;
  llm?: string;
  segmenter?: string;
  text?: string;
  device?: string;
  gpu?: string;
  threads?: string;
  llmThreads?: string;
  contextSize?: string;
  imagingThreads?: string;
  imagingJobs?: string;
  encoderBatch?: string;
  encoderBatchWaitMs?: string;
}

/**
 * Adds the model-selection and engine flags shared by `ask`, `serve` and `eval-shapes`. They carry no
 * commander defaults: an unset flag must not hide what `serve`'s config file or environment say. The
 * defaults are the pipeline's (`PIPELINE_DEFAULTS`).
 */
export function addModelOptions(cmd: Command): Command {
  return cmd
    .option(
      "--model <name|dir>",
      "model preset name (e.g. alpha-llava-7b) or preset folder; default: the bundled model",
    )
    .option("--vision <dir>", "Alpha-CLIP model folder (convert-vision output; overrides --model)")
    .option("--projector <file>", "projector: mmproj GGUF, LLaVA checkpoint or projector folder")
    .option("--llm <file>", "LLM GGUF file")
    .option(
      "--segmenter <dir>",
      "segmenter folder (SAM) that turns --point clicks into regions; default: the model preset's",
    )
    .option(
      "--text <dir>",
      "CLIP text tower folder (convert-text output) for classify; default: the model preset's",
    )
    .addOption(
      new Option(
        "--device <device>",
        "ONNX Runtime device for vision and projector (default auto: CUDA, else a hardware WebGPU adapter, else the CPU)",
      ).choices([...ORT_DEVICES]),
    )
    .addOption(
      new Option(
        "--gpu <gpu>",
        "llama.cpp backend (default auto: CUDA, Vulkan or Metal when a GPU is found, else the CPU; false = the CPU)",
      ).choices(LLM_GPUS.map(String)),
    )
    .option("--threads <n>", "ONNX Runtime threads (default: all cores)")
    .option("--llm-threads <n>", "llama.cpp threads (default 1; more only on a machine with idle cores)")
    .option("--context-size <n>", "LLM context positions per conversation")
    .option(
      "--imaging-threads <n>",
      "threads one imaging job (decode, preprocessing, masks) splits a large image across (default: --threads, else up to 4)",
    )
    .option("--imaging-jobs <n>", "imaging jobs at once; more wait in order (default 2)")
    .option(
      "--encoder-batch <n>",
      "most regions of several requests in one vision-encoder run (default 1 = off on the CPU, 16 on GPUs)",
    )
    .option("--encoder-batch-wait-ms <ms>", "how long a request waits for others to batch with (default 0)");
}

/**
 * The process's imaging pool from the engine settings: threads per job follow --imaging-threads, else
 * --threads (ONNX Runtime's), else the default.
 */
export function configureImaging(model: ModelConfig): ImagingPool {
  const threads = model.imagingThreads ?? model.visionThreads;
  if (threads === undefined && model.imagingJobs === undefined) return ImagingPool.shared();
  return ImagingPool.configureShared({ threads, concurrency: model.imagingJobs });
}

/** Model flags -> typed values, each number checked with its flag's name before anything loads. */
export function modelConfigFromFlags(opts: ModelCliOptions): ModelConfig {
  return {
    preset: opts.model,
    vision: opts.vision,
    projector: opts.projector,
    llm: opts.llm,
    segmenter: opts.segmenter,
    text: opts.text,
    device: opts.device as ModelConfig["device"],
    gpu: opts.gpu === undefined ? undefined : opts.gpu === "false" ? false : (opts.gpu as ModelConfig["gpu"]),
    visionThreads: numberFlag(opts.threads, "--threads", positiveInteger),
    llmThreads: numberFlag(opts.llmThreads, "--llm-threads", positiveInteger),
    contextSize: numberFlag(opts.contextSize, "--context-size", positiveInteger),
    imagingThreads: numberFlag(opts.imagingThreads, "--imaging-threads", positiveInteger),
    imagingJobs: numberFlag(opts.imagingJobs, "--imaging-jobs", positiveInteger),
    encoderBatchRegions: numberFlag(opts.encoderBatch, "--encoder-batch", positiveInteger),
    encoderBatchWaitMs: numberFlag(opts.encoderBatchWaitMs, "--encoder-batch-wait-ms", {
      min: 0,
      integer: true,
    }),
  };
}

/** --device and --threads of a command that runs one ONNX model on its own (encode, embed-text). */
export function addOnnxSessionOptions(cmd: Command): Command {
  return cmd
    .addOption(
      new Option(
        "--device <device>",
        "ONNX Runtime device (auto: CUDA, else a hardware WebGPU adapter, else the CPU)",
      )
        .choices([...ORT_DEVICES])
        .default("auto"),
    )
    .option("--threads <n>", "ONNX Runtime threads (default: all cores)");
}
