/** State shared by the replicas of one deployment (Redis): region embeddings and conversation transcripts. */
export {
  RedisSharedState,
  type SharedStateOp,
  type SharedStateOptions,
  type SharedStateResult,
  type SharedStateStatus,
} from "./shared-state.js";
export {
  decodeEmbeddings,
  encodeEmbeddings,
  roundForSharing,
  type DecodedEmbeddings,
  type SharedFeatureDtype,
  type StoredEmbeddings,
} from "./feature-codec.js";
export { parseTranscript, type Transcript } from "./transcript.js";
