/**
 * The pipeline's options and their defaults, filled in once (`resolvePipelineOptions`): every other
 * part of the pipeline reads the resolved values. The server's config defaults come from here too.
 */
import os from "node:os";
import { ImagingPool } from "../common/imaging/pool.js";
import { DEFAULT_MAX_QUESTION_CHARS, DEFAULT_MAX_REGIONS } from "../common/limits.js";
import type { OrtDevice } from "../common/ort/index.js";
import type { LlmGpu } from "../llm/index.js";
import type { Transcript } from "../shared-state/index.js";
import { DEFAULT_DECODE_LIMITS, type DecodeLimits } from "../vision/index.js";
import type { SharedSegmenterCache } from "../segmenter/types.js";
import type { EncoderBatchOptions } from "./encode-batcher.js";
import type { SharedFeatureCache } from "./region-embedder.js";

/**
 * State shared with other replicas (`RedisSharedState` in src/shared-state): a second tier of the vision
 * cache, and conversation transcripts so that another replica can continue a conversation.
 */
export interface SharedPipelineState extends SharedFeatureCache, SharedSegmenterCache {
  getTranscript(id: string): Promise<Transcript | undefined>;
  putTranscript(transcript: Transcript): Promise<void>;
  /** Whether a transcript was deleted. */
  deleteTranscript(id: string): Promise<boolean>;
}

/** The stages whose timings the pipeline reports (to logs, metrics and benchmarks). */
/** The pipeline's content-keyed caches. */
export type PipelineCache = "vision" | "segmenter" | "shared" | "shared_segmenter";

export type PipelineStage =
  "decode" | "segment" | "preprocess" | "encode" | "project" | "prefill" | "rebuild";

export interface PipelineLogger {
  info(message: string): void;
  warn(message: string): void;
}

export interface PipelineOptions {
  /** Alpha-CLIP model folder (`convert-vision` output), or a fused vision+projector folder. */
  vision: string;
  /** Projector: mmproj GGUF, LLaVA checkpoint or projector folder. Not needed with a fused vision folder. */
  projector?: string;
  /** LLaMA-family GGUF. */
  llm: string;
  /** Segmenter folder (kind "sam-segmenter"): turns clicks into masks (points regions, `segment`). */
  segmenter?: string;
  /** Bytes of segmenter image embeddings kept, so further clicks on an image only decode. Default 256 MiB. */
  segmenterCacheBytes?: number;
  /** CLIP text tower folder (kind "clip-text"): zero-shot classification of regions (`classifyRegions`). */
  text?: string;
  /** Name shown to API clients. Default "region-vqa". */
  modelId?: string;
  /** ONNX Runtime device for vision and projector. Default "auto" (CUDA when usable, else CPU). */
  device?: OrtDevice;
  /** llama.cpp backend. Default "auto": a GPU when node-llama-cpp finds one, else the CPU build. */
  gpu?: LlmGpu;
  /** ONNX Runtime intra-op threads. Default: the machine's cores. */
  visionThreads?: number;
  /** llama.cpp threads. Default 1 (docs/reference.md section 4: spinning thread pools on a small shared CPU). */
  llmThreads?: number;
  /** LLM context positions per conversation. Default: min(4096, the model's trained context). */
  contextSize?: number;
  /** Tokens or embedding rows per llama.cpp decode call. Default 512. */
  batchSize?: number;
  /**
   * Conversations holding a KV cache at once. Default 4. When all are taken, a new one evicts the
   * least recently used conversation that is not answering; if all are answering it waits up to
   * `slotWaitMs` and then fails with `overloaded`.
   */
  maxConversations?: number;
  /** Default 10 s. */
  slotWaitMs?: number;
  /** Bytes of projected image embeddings kept for reuse. Default 256 MiB. */
  visionCacheBytes?: number;
  /** Idle conversations are closed after this long. Default 10 minutes. */
  conversationTtlMs?: number;
  decodeLimits?: DecodeLimits;
  /** Most regions in one caption request. Default 16. */
  maxRegions?: number;
  /** Most characters in one question. Default 2000. */
  maxQuestionChars?: number;
  /**
   * Run the vision models once while loading, so the first request does not pay a GPU's shader
   * compilation (readiness waits for it). Default: when the vision models run on a GPU.
   */
  warmUp?: boolean;
  /** Replaces LLaVA's system prompt. */
  systemPrompt?: string;
  /** Questions asked for captions. */
  captionPrompts?: { short: string; long: string };
  logger?: PipelineLogger;
  /** Called with each stage's duration in ms (metrics hook). */
  onStage?: (stage: PipelineStage, ms: number) => void;
  /** Called on each lookup of the vision cache or the segmenter's image-embedding cache (metrics hook). */
  onCache?: (hit: boolean, cache: PipelineCache) => void;
  /** Shared with other replicas (Redis); the caller owns it (connects and closes it). */
  sharedState?: SharedPipelineState;
  /**
   * Where decoding, hashing, preprocessing and mask work run (off the event loop). Default: the
   * process's shared pool (`ImagingPool.shared()`), which `serve` configures from its settings.
   */
  imaging?: ImagingPool;
  /**
   * Regions of several requests in one vision-encoder run. Default on GPUs { maxRegions: 16,
   * maxWaitMs: 0 } (requests waiting behind a run go together), on the CPU { maxRegions: 1 } (off:
   * there a batch costs as much as its regions one by one).
   */
  encoderBatch?: Partial<EncoderBatchOptions>;
}

export const DEFAULT_CAPTION_PROMPTS = {
  short: "Describe the highlighted region.",
  long: "Describe the highlighted region in detail.",
};

/** Every default of `PipelineOptions` that is not derived from the machine or the model. */
export const PIPELINE_DEFAULTS = {
  modelId: "region-vqa",
  device: "auto" as OrtDevice,
  gpu: "auto" as LlmGpu,
  llmThreads: 1,
  batchSize: 512,
  maxConversations: 4,
  slotWaitMs: 10_000,
  visionCacheBytes: 256 * 1024 * 1024,
  segmenterCacheBytes: 256 * 1024 * 1024,
  conversationTtlMs: 10 * 60_000,
  maxRegions: DEFAULT_MAX_REGIONS,
  maxQuestionChars: DEFAULT_MAX_QUESTION_CHARS,
  captionPrompts: DEFAULT_CAPTION_PROMPTS,
  decodeLimits: DEFAULT_DECODE_LIMITS,
};

const silentLogger: PipelineLogger = { info: () => undefined, warn: () => undefined };

/** Options that stay optional once resolved (no default: absent means "none" or "the model's"). */
type StillOptional =
  | "projector"
  | "segmenter"
  | "text"
  | "contextSize"
  | "systemPrompt"
  | "warmUp"
  | "sharedState"
  | "encoderBatch";

export type ResolvedPipelineOptions = Required<Omit<PipelineOptions, StillOptional | "onStage" | "onCache">> &
  Pick<PipelineOptions, StillOptional> & {
    onStage: (stage: PipelineStage, ms: number) => void;
    onCache: (hit: boolean, cache: PipelineCache) => void;
  };

export function resolvePipelineOptions(options: PipelineOptions): ResolvedPipelineOptions {
  const given = Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined));
  return {
    ...PIPELINE_DEFAULTS,
    visionThreads: os.availableParallelism(),
    imaging: ImagingPool.shared(),
    logger: silentLogger,
    onStage: () => undefined,
    onCache: () => undefined,
    ...(given as PipelineOptions),
  };
}
