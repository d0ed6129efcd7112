/**
 * What a conversation with the language model looks like from outside: questions in, a streamed answer
 * out. The pipeline and the API use these types; `LlavaConversation` implements them.
 */

/** Sampling and stopping options of one answer. Temperature 0 = plain greedy decoding, no penalties. */
export interface GenerationOptions {
  maxTokens?: number;
  temperature?: number;
  topP?: number;
  topK?: number;
  repeatPenalty?: number;
  seed?: number;
  stop?: string[];
  signal?: AbortSignal;
}

export type FinishReason = "stop" | "length" | "abort";

export interface AnswerResult {
  text: string;
  promptTokens: number;
  completionTokens: number;
  finishReason: FinishReason;
}

/** A streamed answer: iterate for text pieces (never a split UTF-8 character); `result` settles at the end. */
export interface AnswerStream extends AsyncIterable<string> {
  readonly result: Promise<AnswerResult>;
}

export interface Turn {
  question: string;
  answer: string;
}

/** One conversation about one image region, holding its KV cache on an LLM sequence. */
export interface Conversation {
  readonly id: string;
  readonly turns: readonly Turn[];
  ask(question: string, options?: GenerationOptions): AnswerStream;
  /** Ends the conversation and frees its sequence; a question in progress finishes first. */
  dispose(): Promise<void>;
}
