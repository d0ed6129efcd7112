/** The composed pipeline (vision -> projector -> LLM) with its caches; what the CLI and the API use. */
export { createPipeline, LocalRegionVqaPipeline } from "./pipeline.js";
export {
  DEFAULT_CAPTION_PROMPTS,
  PIPELINE_DEFAULTS,
  resolvePipelineOptions,
  type PipelineCache,
  type PipelineLogger,
  type PipelineOptions,
  type PipelineStage,
  type ResolvedPipelineOptions,
  type SharedPipelineState,
} from "./options.js";
export { RegionEmbedder, type RegionEmbeddings, type SharedFeatureCache } from "./region-embedder.js";
export {
  CONVERSATION_ID_PATTERN,
  ConversationRegistry,
  newConversationId,
  type StartConversationOptions,
} from "./conversation-registry.js";
export { ByteLruCache, type ByteLruStats } from "../common/lru-cache.js";
export type * from "./types.js";
export {
  DEFAULT_TEMPLATE,
  MAX_LABELS,
  RegionClassifier,
  checkLabels,
  type ClassifyResult,
  type LabelScore,
} from "./region-classifier.js";
