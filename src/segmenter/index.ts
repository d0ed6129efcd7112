/**
 * The segmenter stage: Segment Anything-style ONNX models that turn clicks and boxes into masks
 * (`SamSegmenter`), with SAM's preprocessing, prompt encoding and post-processing, and the writer of
 * the bundled miniature segmenter's graphs.
 */
export {
  DEFAULT_SEGMENTER_CACHE_BYTES,
  NO_SEGMENTER_MESSAGE,
  SEGMENTER_KIND,
  SamSegmenter,
  imageKey,
  readSegmenterManifest,
  type SegmenterLoadOptions,
} from "./segmenter.js";
export {
  MAX_PROMPT_POINTS,
  checkPrompt,
  encodePrompt,
  preprocessForSam,
  samFrame,
  type PromptTensors,
} from "./preprocess.js";
export { logitsToImage, thresholdLogits } from "./postprocess.js";
export { resizeBilinear } from "../common/imaging/torch-bilinear.js";
export { SamProcessor, samNormalizationLut } from "./processor.js";
export {
  SAM21_TINY_SHAPED_ARCHITECTURE,
  SHAPES_SEGMENTER_ARCHITECTURE,
  buildMiniSamDecoder,
  buildMiniSamEncoder,
  miniSamConfig,
  miniSamParameterShapes,
  randomMiniSamWeights,
  type MiniSamArchitecture,
} from "./mini-sam-graph.js";
export { writeMiniSamFolder, type WriteMiniSamOptions } from "./folder.js";
export type * from "./types.js";
