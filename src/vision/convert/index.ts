/** Checkpoint -> ONNX conversion of the Alpha-CLIP visual encoder. */
export {
  inspectAlphaClipStateDict,
  type AlphaClipVisionConfig,
  type InspectedCheckpoint,
} from "./alpha-clip-config.js";
export {
  appendAlphaClipVisionNodes,
  ALPHA_INPUT,
  IMAGE_EMBED_OUTPUT,
  IMAGE_INPUT,
  LLAVA_FEATURES_OUTPUT,
  type AlphaClipGraphOptions,
  type AlphaClipGraphValues,
} from "./alpha-clip-graph.js";
export { ClipLayers, transposeMatrix, type ResidualBlockOptions } from "./clip-layers.js";
export {
  convertVisionCheckpoint,
  sha256File,
  checkpointSource,
  conversionError,
  VISION_ONNX_FILE,
  writeAlphaClipModelFolder,
  type AlphaClipVisionManifest,
  type ConvertVisionOptions,
  type Logger,
  type VisionGraphExtension,
  type VisionManifestConfig,
  type WriteVisionFolderOptions,
} from "./model-folder.js";
