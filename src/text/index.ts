/** The CLIP text tower: tokenizer, checkpoint -> ONNX conversion, the ONNX encoder, zero-shot scoring. */
export {
  inspectClipTextStateDict,
  type ClipTextConfig,
  type ClipTextLayout,
  type InspectedTextCheckpoint,
} from "./config.js";
export {
  appendClipTextNodes,
  INPUT_IDS_INPUT,
  LAST_HIDDEN_STATE_OUTPUT,
  TEXT_EMBEDS_OUTPUT,
  type ClipTextGraphOptions,
  type ClipTextGraphValues,
} from "./text-graph.js";
export {
  convertTextCheckpoint,
  SELF_CHECK_TOLERANCE,
  TEXT_ONNX_FILE,
  writeClipTextModelFolder,
  type ConvertTextOptions,
  type SelfCheckResult,
  type WriteClipTextFolderOptions,
} from "./convert.js";
export {
  CLIP_TEXT_MODEL_KIND,
  ClipTextEncoder,
  readClipTextManifest,
  type ClipTextEncodeOptions,
  type ClipTextEncodeResult,
  type ClipTextLoadOptions,
  type ClipTextManifest,
  type ClipTextManifestConfig,
} from "./encoder.js";
export { clipTextFeaturesReference, eotIndex } from "./reference.js";
export {
  checkTokenIds,
  EOT_TOKEN_ID,
  parseTokenIdFile,
  SOT_TOKEN_ID,
  type CheckedIds,
  type TokenIds,
} from "./token-ids.js";
export {
  ALPHA_CLIP_ZERO_SHOT_SCALE,
  l2NormalizeRows,
  softmaxRows,
  ZERO_SHOT_TEMPLATE,
  zeroShotLogits,
} from "./zero-shot.js";
export { ClipTokenizer, type ClipTokenizeOptions, type ClipTokenizerOptions } from "./tokenizer.js";
