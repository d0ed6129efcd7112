/**
 * What the pipeline needs from its engines, as interfaces: `AlphaClipEncoder` (ONNX Runtime) is the
 * vision encoder and `LlavaModel` (llama.cpp) the language model. The pipeline is built over these,
 * so the same flow (decode, regions, preprocessing, caches, batching, conversations) can also run
 * over other engines: the server-ceiling benchmark (the ceiling part of bench/imaging.ts) puts instant stand-ins of the
 * real shapes here to measure what the server itself costs.
 */
import type { OpenLlavaConversationOptions } from "../llm/model.js";
import type { Conversation } from "../llm/types.js";
import type { AlphaClipEncoder } from "../vision/index.js";

/** A vision encoder: batches of regions -> features (or, fused, LLM-ready embeddings). */
export type RegionEncoder = Pick<
  AlphaClipEncoder,
  "imageSize" | "provider" | "device" | "config" | "manifest" | "encode" | "dispose"
>;

/** A language model holding conversations on a bounded number of slots. */
export interface ConversationEngine {
  readonly device: string;
  /** Width of one embedding row it takes. */
  readonly embeddingSize: number;
  readonly maxConversations: number;
  readonly activeConversations: number;
  openConversation(options: OpenLlavaConversationOptions): Promise<Conversation>;
  dispose(): Promise<void>;
}
