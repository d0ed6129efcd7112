/** Public surface of the vision stage: decode -> region -> preprocess -> encoder. */
export type { RgbImage, Mask, Region, Box, Polygon, CocoRle, PointPrompt } from "./types.js";
export {
  decodeImage,
  decodeMaskImage,
  DEFAULT_DECODE_LIMITS,
  SUPPORTED_IMAGE_FORMATS,
  type DecodeLimits,
  type DecodeOptions,
  type DecodedImage,
} from "./decode.js";
export {
  regionToMask,
  regionToMaskAsync,
  boxToMask,
  alphaToMask,
  alphaToMaskAsync,
  ALPHA_REGION_THRESHOLD,
} from "./region.js";
export { LlavaImageProcessor, type LlavaRegionAlpha } from "./processor.js";
export { encodeMaskPng } from "./mask-png.js";
export { rasterizePolygons } from "./polygon.js";
export {
  decodeRle,
  encodeRle,
  encodeRleAsync,
  decodeRleString,
  encodeRleString,
  maskToRleCounts,
  rleRunLengths,
} from "./rle.js";
export { pillowResize, pillowResizeBicubic, type PillowFilter } from "../common/imaging/pillow-resize.js";
export {
  preprocessForLlava,
  preprocessImageForLlava,
  llavaAlphaFromMask,
  preprocessForAlphaClipReadme,
  padToSquare,
  normalizeClip,
  CLIP_MEAN,
  CLIP_STD,
  LLAVA_PAD_COLOR,
  LLAVA_ALPHA_FOREGROUND,
  LLAVA_ALPHA_BACKGROUND,
  type LlavaPreprocessed,
  type ReadmePreprocessed,
  type ReadmePreprocessOptions,
} from "./preprocess.js";
export {
  AlphaClipEncoder,
  readEncoderManifest,
  LLAVA_FEATURES_OUTPUT,
  IMAGE_EMBED_OUTPUT,
  PROJECTED_OUTPUT,
  type EncoderDevice,
  type EncoderInput,
  type EncoderOutput,
  type EncoderLoadOptions,
  type EncoderLogger,
  type EncoderModelConfig,
} from "./encoder.js";
export {
  openStateDict,
  inMemoryStateDict,
  renameKeys,
  type StateDict,
  type TensorInfo,
} from "./checkpoint/index.js";
export {
  convertVisionCheckpoint,
  writeAlphaClipModelFolder,
  inspectAlphaClipStateDict,
  appendAlphaClipVisionNodes,
  type AlphaClipVisionConfig,
  type AlphaClipVisionManifest,
  type ConvertVisionOptions,
  type VisionGraphExtension,
  type WriteVisionFolderOptions,
} from "./convert/index.js";
