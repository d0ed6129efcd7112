import type { Region, RgbImage } from "../vision/types.js";

/** Sampling and stopping options of one answer. Temperature 0 = plain greedy decoding, no penalties. */
export interface GenerationOptions {
  maxTokens?: number;
  temperature?: number;
  topP?: number;
  topK?: number;
  repeatPenalty?: number;
  seed?: number;
  stop?: string[];
  signal?: AbortSignal;
}

export type FinishReason = "stop" | "length" | "abort";

export interface AnswerResult {
  text: string;
  promptTokens: number;
  completionTokens: number;
  finishReason: FinishReason;
}

/** A streamed answer: iterate for text pieces (never a split UTF-8 character); `result` settles at the end. */
export interface AnswerStream extends AsyncIterable<string> {
  readonly result: Promise<AnswerResult>;
}

export interface Turn {
  question: string;
  answer: string;
}

/** One conversation about one image region, holding its KV cache on an LLM sequence. */
export interface Conversation {
  readonly id: string;
  readonly turns: readonly Turn[];
  ask(question: string, options?: GenerationOptions): AnswerStream;
  close(): Promise<void>;
}

export interface OpenConversationOptions {
  /** Earlier turns (e.g. from an OpenAI-style message history) to replay after the image. */
  history?: Turn[];
  systemPrompt?: string;
  /** `image` already decoded by the caller (it must be exactly that decoding): saves a second decode. */
  decoded?: RgbImage;
  /**
   * Cancels the wait for a conversation slot. A prefill already running is not interrupted: the
   * conversation is returned and the caller, seeing its signal fired, closes it.
   */
  signal?: AbortSignal;
}

export interface ModelsInfo {
  /** Name shown in /v1/models and answers. */
  id: string;
  vision: string;
  projector: string;
  llm: string;
}

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
  /** One caption per region; the regions of one image are encoded in one batch. */
  captionRegions(
    image: Uint8Array,
    regions: Region[],
    options?: GenerationOptions & { detail?: "short" | "long"; decoded?: RgbImage },
  ): Promise<AnswerResult[]>;
  dispose(): Promise<void>;
}
