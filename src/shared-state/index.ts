/** State shared by the replicas of one deployment (Redis): region embeddings and conversation transcripts. */
export {
  RedisSharedState,
  type SharedStateOp,
  type SharedStateOptions,
  type SharedStateResult,
  type SharedStateStatus,
} from "./shared-state.js";
export {
  decodeBundle,
  decodeEmbeddings,
  encodeBundle,
  encodeEmbeddings,
  roundBundleForSharing,
  roundForSharing,
  type DecodedBundle,
  type DecodedEmbeddings,
  type NamedTensor,
  type SharedFeatureDtype,
  type StoredEmbeddings,
  type TensorBundle,
} from "./feature-codec.js";
export { parseTranscript, type Transcript } from "./transcript.js";
