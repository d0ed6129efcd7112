export type * from "./types.js";
export {
  LlavaModel,
  type LlavaModelOptions,
  type OpenLlavaConversationOptions,
  type LlmGpu,
  LLM_GPUS,
} from "./model.js";
export {
  LlavaConversation,
  DEFAULT_MAX_TOKENS,
  type LlavaAnswerResult,
  type LlavaAnswerStream,
} from "./conversation.js";
export {
  LlavaPrompt,
  LLAVA_SYSTEM_PROMPT,
  LLAVA_V1_TEMPLATE,
  IMAGE_PLACEHOLDER,
  resolveTemplate,
  type LlavaPromptTemplate,
} from "./prompt.js";
export {
  evaluateEmbeddings,
  assertEmbeddingSupport,
  checkNativeLayout,
  type EvaluateEmbeddingsOptions,
  type NativeContextInfo,
} from "./native.js";
export {
  writeLlamaGguf,
  readLlamaVocabulary,
  permuteRowsForPairRope,
  randomLlamaWeights,
  seededRandom,
  type LlamaVocabulary,
  type LlamaWeights,
  type LlamaLayerWeights,
  type LlamaGgufConfig,
  type RandomLlamaShape,
} from "./gguf-llama.js";
export { AnswerStreamController, StopStringFilter } from "./answer-stream.js";
