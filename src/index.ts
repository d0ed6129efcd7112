/**
 * region-vqa as a library: the composed pipeline, the HTTP server, each stage on its own (Alpha-CLIP
 * encoder, LLaVA projector, LLaVA language model, SAM segmenter), the state replicas share through Redis,
 * model helpers and the error type. The CLI
 * (`region-vqa`) is built on exactly these.
 */
export {
  createPipeline,
  LocalRegionVqaPipeline,
  PIPELINE_DEFAULTS,
  type PipelineOptions,
  type PipelineStage,
  type RegionVqaPipeline,
  type OpenConversationOptions,
  type ModelsInfo,
  type SharedPipelineState,
} from "./pipeline/index.js";
export { RedisSharedState, type SharedStateOptions, type SharedStateStatus } from "./shared-state/index.js";
export type {
  AnswerResult,
  AnswerStream,
  Conversation,
  FinishReason,
  GenerationOptions,
  Turn,
} from "./llm/index.js";
export { buildServer, closeGracefully, ServerMetrics, type BuildServerOptions } from "./api/index.js";
export { defaultConfig, loadConfig, type ServerConfig, type ServerLimits } from "./config.js";
export {
  AlphaClipEncoder,
  convertVisionCheckpoint,
  decodeImage,
  preprocessForLlava,
  regionToMask,
  type Box,
  type CocoRle,
  type EncoderOutput,
  encodeMaskPng,
  type Mask,
  type PointPrompt,
  type Polygon,
  type Region,
  type RgbImage,
} from "./vision/index.js";
export { LlavaProjector, readMmprojProjector } from "./projector/index.js";
export {
  SamSegmenter,
  type SegmentOptions,
  type SegmentPrompt,
  type SegmentResult,
  type SegmenterLoadOptions,
} from "./segmenter/index.js";
export { LlavaModel, LlavaConversation, type LlavaModelOptions } from "./llm/index.js";
export { OnnxSession, type OrtDevice } from "./common/ort/index.js";
export {
  DEFAULT_MODEL_DIR,
  listInstalledModels,
  pullModel,
  resolveModelOptions,
  resolveModelPreset,
  type ModelConfig,
} from "./models/index.js";
export { isRegionVqaError, RegionVqaError, type ErrorCode } from "./common/errors.js";
export type { Tensor } from "./common/tensor.js";
