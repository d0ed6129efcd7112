/** The composed pipeline (vision -> projector -> LLM) with its caches; what the CLI and the API use. */
export { createPipeline, LocalRegionVqaPipeline } from "./pipeline.js";
export {
  DEFAULT_CAPTION_PROMPTS,
  PIPELINE_DEFAULTS,
  resolvePipelineOptions,
  type PipelineLogger,
  type PipelineOptions,
  type PipelineStage,
  type ResolvedPipelineOptions,
} from "./options.js";
export { RegionEmbedder, type RegionEmbeddings } from "./region-embedder.js";
export { ConversationRegistry, type StartConversationOptions } from "./conversation-registry.js";
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
