/** The composed pipeline (vision -> projector -> LLM) with its caches; what the CLI and the API use. */
export {
  createPipeline,
  LocalRegionVqaPipeline,
  DEFAULT_CAPTION_PROMPTS,
  type PipelineOptions,
  type PipelineStage,
  type PipelineLogger,
} from "./pipeline.js";
export { ByteLruCache, type ByteLruStats } from "./lru-cache.js";
export type * from "./types.js";
