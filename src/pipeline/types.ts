import type { ByteLruStats } from "../common/lru-cache.js";
import type { EncodeBatcherStats } from "./encode-batcher.js";
import type { ClassifyResult } from "./region-classifier.js";
import type { RegionEmbeddings } from "./region-embedder.js";
import type { AnswerResult, Conversation, GenerationOptions, Turn } from "../llm/types.js";
import type { SegmentOptions, SegmentPrompt, SegmentResult } from "../segmenter/types.js";
import type { Region, RgbImage } from "../vision/types.js";

export type * from "../llm/types.js";

export interface OpenConversationOptions {
  /** Earlier turns (e.g. from an OpenAI-style message history) to replay after the image. */
  history?: Turn[];
  systemPrompt?: string;
  /** `image` already decoded by the caller (it must be exactly that decoding): saves a second decode. */
  decoded?: RgbImage;
  /**
   * Cancels the wait for a conversation slot. A prefill already running is not interrupted: the
   * conversation is returned and the caller, seeing its signal fired, disposes of it.
   */
  signal?: AbortSignal;
  /**
   * The conversation's id, chosen by the client (see CONVERSATION_ID_PATTERN), e.g. so that a load
   * balancer hashing on it routes the first turn where the follow-ups will go. Refused with
   * `conversation_exists` when taken.
   */
  id?: string;
}

/** A conversation found for a follow-up: held here, or `rebuilt` from its shared transcript. */
export interface ResumedConversation {
  conversation: Conversation;
  rebuilt: boolean;
}

export interface ModelsInfo {
  /** Name shown in /v1/models and answers. */
  id: string;
  vision: string;
  projector: string;
  llm: string;
  /** The segmenter folder, when one is loaded. */
  segmenter?: string;
  /** The CLIP text tower folder, when one is loaded. */
  text?: string;
  /** Where each stage runs, e.g. { vision: "webgpu (NVIDIA RTX 4090)", llm: "cuda (NVIDIA RTX 4090)" }. */
  devices: { vision: string; llm: string; segmenter?: string; text?: string };
}

/** Live conversations and cache counters, for metrics and benchmarks. */
export interface PipelineStats {
  conversations: number;
  /** The vision cache (projected region embeddings). */
  cache: ByteLruStats;
  /** The segmenter's image-embedding cache, when a segmenter is loaded. */
  segmenterCache?: ByteLruStats;
  /** The text-feature cache, when a text tower is loaded. */
  textCache?: ByteLruStats;
  /** Vision-encoder runs, and the requests and regions they served (fewer runs than requests: batched). */
  encoder?: EncodeBatcherStats;
}

export type { SegmentOptions } from "../segmenter/types.js";

/** What `src/api` and the CLI use: the composed vision -> projector -> LLM pipeline. */
export interface RegionVqaPipeline {
  readonly models: ModelsInfo;
  /** Encoded image bytes (PNG, JPEG, ...) and one region -> a conversation whose image is cached. */
  openConversation(
    image: Uint8Array,
    region: Region,
    options?: OpenConversationOptions,
  ): Promise<Conversation>;
  getConversation(id: string): Conversation | undefined;
  /**
   * A conversation for a follow-up: this process's, or (with shared state) one rebuilt from its
   * transcript and the shared region embeddings (prefill, no encoding). Undefined when unknown.
   */
  resumeConversation?(
    id: string,
    options?: { signal?: AbortSignal },
  ): Promise<ResumedConversation | undefined>;
  /** Ends a conversation here and in the shared state; false when it was known to neither. */
  closeConversation?(id: string): Promise<boolean>;
  /** One caption per region; the regions of one image are encoded in one batch. */
  captionRegions(
    image: Uint8Array,
    regions: Region[],
    options?: GenerationOptions & { detail?: "short" | "long"; decoded?: RgbImage },
  ): Promise<AnswerResult[]>;
  /**
   * Clicks and/or a box -> a mask, with the segmenter (absent when none is loaded). The image's
   * embeddings are cached, so further clicks on it only run the prompt decoder.
   */
  segment?(image: RgbImage, prompt: SegmentPrompt, options?: SegmentOptions): Promise<SegmentResult>;
  /**
   * Zero-shot classification (absent without a text tower): each region's Alpha-CLIP embedding against
   * the labels' CLIP text features; rankings both ways.
   */
  classifyRegions?(
    image: Uint8Array,
    regions: Region[],
    labels: unknown,
    options?: { templates?: unknown; decoded?: RgbImage },
  ): Promise<ClassifyResult>;
  /**
   * Texts -> their L2-normalised CLIP text features, one per text, in order (absent without a text
   * tower). At most MAX_EMBED_TEXTS non-empty texts, each within CLIP's 77 tokens (never truncated).
   */
  embedTexts?(texts: string[]): Promise<Float32Array[]>;
  /**
   * Image + regions -> one embedding block per region (`imageEmbed`: the region's unnormalised
   * Alpha-CLIP embedding, when the vision model outputs it).
   */
  embedRegions?(image: Uint8Array, regions: Region[], decoded?: RgbImage): Promise<RegionEmbeddings[]>;
  /** Cache and conversation counters (for /metrics). */
  stats?(): PipelineStats;
  dispose(): Promise<void>;
}
