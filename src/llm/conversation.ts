import { randomUUID } from "node:crypto";
import type { LlamaContextSequence, LlamaModel, SequenceEvaluateOptions, Token } from "node-llama-cpp";
import { RegionVqaError, isRegionVqaError } from "../common/errors.js";
import type {
  AnswerResult,
  AnswerStream,
  Conversation,
  FinishReason,
  GenerationOptions,
  Turn,
} from "./types.js";
import { AnswerStreamController, StopStringFilter } from "./answer-stream.js";
import { evaluateEmbeddings } from "./native.js";
import type { LlavaPrompt } from "./prompt.js";

export interface LlavaAnswerResult extends AnswerResult {
  /** Tokens actually evaluated for this question (the rest of the prompt was already in the KV cache). */
  evaluatedPromptTokens: number;
  /** Generated token ids (without the end-of-generation token). */
  tokens: Token[];
}

export type LlavaAnswerStream = AnswerStream & { readonly result: Promise<LlavaAnswerResult> };

export const DEFAULT_MAX_TOKENS = 512;
const REPEAT_PENALTY_WINDOW = 64;

export interface ConversationSetup {
  id?: string;
  sequence: LlamaContextSequence;
  model: LlamaModel;
  prompt: LlavaPrompt;
  /** Called once when the conversation closes; returns the sequence to its pool. */
  release: (sequence: LlamaContextSequence) => Promise<void>;
}

interface AnswerSpan {
  /** Sequence index where the answer's tokens start. */
  start: number;
  text: string;
}

/**
 * One conversation about one image, on its own sequence of a shared context. The image (and any
 * replayed history) is evaluated once; every question then evaluates only its own new tokens.
 * Questions asked while another answer is generating wait for it.
 */
export class LlavaConversation implements Conversation {
  readonly id: string;
  private readonly sequence: LlamaContextSequence;
  private readonly model: LlamaModel;
  private readonly prompt: LlavaPrompt;
  private readonly release: (sequence: LlamaContextSequence) => Promise<void>;
  private readonly turnList: Turn[] = [];
  /** The last answer in the KV cache, to close it canonically before the next question. */
  private lastAnswer: AnswerSpan | undefined;
  /** Where the text after the image starts (tokens before it are placeholders or the system prompt). */
  private textStart = 0;
  private queue: Promise<void> = Promise.resolve();
  private closed = false;
  private closing: Promise<void> | undefined;

  /** Use `LlavaModel.openConversation`. */
  constructor(setup: ConversationSetup) {
    this.id = setup.id ?? randomUUID();
    this.sequence = setup.sequence;
    this.model = setup.model;
    this.prompt = setup.prompt;
    this.release = setup.release;
  }

  get turns(): readonly Turn[] {
    return this.turnList;
  }

  /** Context positions in use (image rows count one each). */
  get tokenCount(): number {
    return this.sequence.nextTokenIndex;
  }

  get contextSize(): number {
    return this.sequence.contextSize;
  }

  /** @internal Evaluates the system prompt, the image rows and any history. Called once by LlavaModel. */
  async start(
    image: { embeddings: Float32Array; count: number } | undefined,
    history: readonly Turn[],
  ): Promise<void> {
    const before = this.prompt.beforeImage();
    this.ensureRoom(before.length + (image?.count ?? 0));
    await this.sequence.evaluateWithoutGeneratingNewTokens(before);
    if (image) {
      await evaluateEmbeddings(this.sequence, image.embeddings, image.count, {
        placeholderToken: this.model.tokens.bos ?? 0,
      });
    }
    this.textStart = this.sequence.nextTokenIndex;
    for (const turn of history) {
      const answer = this.prompt.answer(turn.answer);
      const tokens = [...(await this.closePreviousAnswer()), ...this.questionTokens(turn.question)];
      this.ensureRoom(tokens.length + answer.length);
      await this.sequence.evaluateWithoutGeneratingNewTokens([...tokens, ...answer]);
      this.lastAnswer = { start: this.sequence.nextTokenIndex - answer.length, text: turn.answer };
      this.turnList.push({ question: turn.question, answer: turn.answer });
    }
  }

  private questionTokens(question: string): Token[] {
    return this.lastAnswer === undefined && this.turnList.length === 0
      ? this.prompt.afterImage(question)
      : [...this.prompt.answerEnd(), ...this.prompt.nextTurn(question)];
  }

  /**
   * Makes the cached tokens of the previous answer equal to the tokenisation of its text, i.e. what a
   * conversation replayed from history holds (a stop string or the length limit may have left other
   * tokens there): erases the cached tokens from the first difference and returns the tokens that
   * still have to be evaluated before the next question.
   */
  private async closePreviousAnswer(): Promise<Token[]> {
    if (!this.lastAnswer) return [];
    const canonical = this.prompt.answer(this.lastAnswer.text);
    const cached = this.sequence.contextTokens.slice(this.lastAnswer.start);
    let same = 0;
    while (same < canonical.length && same < cached.length && canonical[same] === cached[same]) same++;
    if (same < cached.length) {
      await this.sequence.eraseContextTokenRanges([
        { start: this.lastAnswer.start + same, end: this.sequence.nextTokenIndex },
      ]);
    }
    return canonical.slice(same);
  }

  private ensureRoom(count: number): void {
    if (this.sequence.nextTokenIndex + count > this.sequence.contextSize) {
      throw new RegionVqaError(
        "context_full",
        `the conversation needs ${this.sequence.nextTokenIndex + count} context positions, only ${this.sequence.contextSize} exist`,
      );
    }
  }

  ask(question: string, options: GenerationOptions = {}): LlavaAnswerStream {
    const controller = new AnswerStreamController<LlavaAnswerResult>();
    const run = this.queue.then(() => this.generate(question, options, controller));
    this.queue = run.catch(() => undefined);
    run.catch((err) => controller.fail(err));
    return controller.stream;
  }

  private async generate(
    question: string,
    options: GenerationOptions,
    controller: AnswerStreamController<LlavaAnswerResult>,
  ): Promise<void> {
    if (this.closed) throw new RegionVqaError("conversation_not_found", `conversation ${this.id} is closed`);
    if (typeof question !== "string" || question.trim().length === 0) {
      throw new RegionVqaError("invalid_request", "the question is empty");
    }
    const settings = resolveGeneration(options);
    const signal = options.signal;
    const aborted = (): LlavaAnswerResult => ({
      text: "",
      promptTokens: this.sequence.nextTokenIndex,
      completionTokens: 0,
      finishReason: "abort",
      evaluatedPromptTokens: 0,
      tokens: [],
    });
    if (signal?.aborted) return controller.end(aborted());

    const before = this.sequence.nextTokenIndex;
    const promptPart = [...(await this.closePreviousAnswer()), ...this.questionTokens(question)];
    this.ensureRoom(promptPart.length);
    const evaluatedPromptTokens = promptPart.length;
    const answerStart = this.sequence.nextTokenIndex + promptPart.length;
    const promptTokens = answerStart;
    const limit = Math.min(settings.maxTokens, this.sequence.contextSize - answerStart);
    const filter = new StopStringFilter(options.stop);
    const generated: Token[] = [];
    let finishReason: FinishReason = "stop";
    let text = "";

    const evaluateOptions: SequenceEvaluateOptions = settings.greedy
      ? { temperature: 0 }
      : {
          temperature: settings.temperature,
          topK: settings.topK,
          topP: settings.topP,
          seed: settings.seed,
          repeatPenalty:
            settings.repeatPenalty === 1
              ? undefined
              : {
                  penalty: settings.repeatPenalty,
                  maxPunishTokens: REPEAT_PENALTY_WINDOW,
                  punishTokens: () => {
                    const tokens = this.sequence.contextTokens;
                    return tokens.slice(Math.max(this.textStart, tokens.length - REPEAT_PENALTY_WINDOW));
                  },
                },
        };

    // Detokenising the whole answer each time keeps multi-byte characters and SentencePiece spaces
    // right; answers are short enough for this to cost nothing next to a decode step.
    const decodeAnswer = (): string => this.model.detokenize(generated, false).trimStart();
    const emit = (): boolean => {
      const { piece, stoppedText } = filter.update(decodeAnswer(), false);
      if (piece.length > 0) controller.push(piece);
      if (stoppedText === undefined) return false;
      text = stoppedText;
      return true;
    };

    try {
      if (limit <= 0) {
        // No room to answer: evaluate the question anyway so the cache matches the recorded turn.
        await this.sequence.evaluateWithoutGeneratingNewTokens(promptPart);
        finishReason = "length";
      } else {
        let stoppedByString = false;
        for await (const token of this.sequence.evaluate(promptPart, evaluateOptions)) {
          generated.push(token);
          if (emit()) {
            stoppedByString = true;
            break;
          }
          if (signal?.aborted) {
            finishReason = "abort";
            break;
          }
          if (generated.length >= limit) {
            finishReason = "length";
            break;
          }
        }
        if (!stoppedByString) {
          // Flush what was held back (a partial stop string or a trailing incomplete character).
          // A trailing replacement character is a multi-byte character cut by the end: drop it.
          const flushed = decodeAnswer().replace(/\uFFFD+$/u, "");
          const { piece, stoppedText } = filter.update(flushed, true);
          if (piece.length > 0) controller.push(piece);
          text = stoppedText ?? flushed;
        }
      }
    } catch (err) {
      // Leave the cache as it was before this question, so the recorded turns still describe it.
      if (!this.sequence.disposed && this.sequence.nextTokenIndex > before) {
        await this.sequence
          .eraseContextTokenRanges([{ start: before, end: this.sequence.nextTokenIndex }])
          .catch(() => undefined);
      }
      throw err;
    }

    this.lastAnswer = { start: answerStart, text };
    this.turnList.push({ question, answer: text });
    controller.end({
      text,
      promptTokens,
      completionTokens: generated.length,
      finishReason,
      evaluatedPromptTokens,
      tokens: generated,
    });
  }

  /** Frees the sequence for another conversation; pending questions finish first. */
  dispose(): Promise<void> {
    this.closing ??= (async () => {
      this.closed = true;
      await this.queue;
      await this.release(this.sequence);
    })();
    return this.closing;
  }
}

interface ResolvedGeneration {
  greedy: boolean;
  maxTokens: number;
  temperature: number;
  topK: number;
  topP: number;
  repeatPenalty: number;
  seed: number | undefined;
}

export function resolveGeneration(options: GenerationOptions): ResolvedGeneration {
  const check = (name: string, value: number | undefined, ok: (v: number) => boolean): void => {
    if (value !== undefined && (typeof value !== "number" || !Number.isFinite(value) || !ok(value))) {
      throw new RegionVqaError("invalid_request", `invalid ${name}: ${String(value)}`);
    }
  };
  check("maxTokens", options.maxTokens, (v) => Number.isInteger(v) && v >= 1);
  check("temperature", options.temperature, (v) => v >= 0 && v <= 10);
  check("topP", options.topP, (v) => v > 0 && v <= 1);
  check("topK", options.topK, (v) => Number.isInteger(v) && v >= 0);
  check("repeatPenalty", options.repeatPenalty, (v) => v > 0 && v <= 10);
  check("seed", options.seed, (v) => Number.isInteger(v) && v >= 0);
  if (
    options.stop !== undefined &&
    (!Array.isArray(options.stop) || options.stop.some((s) => typeof s !== "string"))
  ) {
    throw new RegionVqaError("invalid_request", "stop must be an array of strings");
  }
  const temperature = options.temperature ?? 0;
  return {
    greedy: temperature === 0,
    maxTokens: options.maxTokens ?? DEFAULT_MAX_TOKENS,
    temperature,
    topK: options.topK ?? 40,
    topP: options.topP ?? 0.95,
    repeatPenalty: options.repeatPenalty ?? 1.1,
    seed: options.seed,
  };
}

export function isAbortLike(err: unknown): boolean {
  return isRegionVqaError(err) && err.code === "aborted";
}
