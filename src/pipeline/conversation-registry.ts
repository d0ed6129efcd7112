/**
 * `ConversationRegistry`: the live conversations of one LLM. The LLM has a fixed pool of sequences
 * (slots); the registry decides who gets one: a new conversation evicts the least recently used idle
 * one when the pool is full, waits a bounded time when every slot is answering (then `overloaded`),
 * and conversations idle longer than the TTL are closed by a sweep. A conversation answering right now
 * is never evicted or swept.
 */
import { randomUUID } from "node:crypto";
import { isRegionVqaError, RegionVqaError } from "../common/errors.js";
import { checkQuestion } from "../common/limits.js";
import type { AnswerStream, Conversation, GenerationOptions, Turn } from "../llm/index.js";
import type { ConversationEngine } from "./ports.js";
import type { ResolvedPipelineOptions } from "./options.js";
import type { RegionEmbeddings } from "./region-embedder.js";

type RegistryOptions = Pick<
  ResolvedPipelineOptions,
  "slotWaitMs" | "conversationTtlMs" | "maxQuestionChars" | "systemPrompt" | "logger" | "onStage"
>;

export interface StartConversationOptions {
  history?: Turn[];
  systemPrompt?: string;
  /** Cancels the wait for a slot (a prefill already running is not interrupted). */
  signal?: AbortSignal;
  /** Keep it findable by id (default true); a caption's one-shot conversation is not. */
  register?: boolean;
  /** Wait for a slot as long as `signal` allows instead of `slotWaitMs` (callers that must not fail). */
  waitForSlot?: boolean;
  /** The conversation's id (a client's, or a transcript's being continued); default a new random one. */
  id?: string;
  /**
   * Runs after each answer, before the answer's `result` resolves: e.g. writes the transcript to the
   * shared state, so that nothing a client has been told is lost when this process dies right after.
   */
  afterTurn?: (conversation: Conversation) => Promise<void>;
}

interface Entry {
  conversation: Conversation;
  lastUsed: number;
  /** Answers being generated right now. */
  busy: number;
}

/** A new conversation id: `conv_` and 32 hex digits. */
export function newConversationId(): string {
  return `conv_${randomUUID().replace(/-/g, "")}`;
}

/**
 * Ids a client may choose (for a load balancer that hashes on the id from the first turn): 8 to 128
 * letters, digits, `_`, `-`, `.`, `:`. They end up in Redis keys, logs and headers.
 */
export const CONVERSATION_ID_PATTERN = /^[A-Za-z0-9_.:-]{8,128}$/;

export class ConversationRegistry {
  private readonly entries = new Map<string, Entry>();
  /** New conversations waiting for a free slot. */
  private slotWaiters = 0;
  private readonly sweepTimer: NodeJS.Timeout;

  constructor(
    private readonly llm: ConversationEngine,
    private readonly options: RegistryOptions,
  ) {
    const ttl = options.conversationTtlMs;
    this.sweepTimer = setInterval(() => void this.closeIdle(ttl), Math.min(ttl, 30_000));
    this.sweepTimer.unref();
  }

  /** Registered conversations. */
  get size(): number {
    return this.entries.size;
  }

  get(id: string): Conversation | undefined {
    const entry = this.entries.get(id);
    if (entry) entry.lastUsed = Date.now();
    return entry?.conversation;
  }

  /** Starts a conversation on one region's embeddings (evaluates the prompt, the image and `history`). */
  async start(image: RegionEmbeddings, options: StartConversationOptions = {}): Promise<Conversation> {
    for (const turn of options.history ?? []) checkQuestion(turn.question, this.options.maxQuestionChars);
    const id = options.id ?? newConversationId();
    if (this.llm.activeConversations >= this.llm.maxConversations) await this.evictIdle();
    const slotWaitMs = options.waitForSlot ? undefined : this.options.slotWaitMs;
    const signals = [options.signal, slotWaitMs !== undefined ? AbortSignal.timeout(slotWaitMs) : undefined];
    const present = signals.filter((s): s is AbortSignal => s !== undefined);
    const signal = present.length > 1 ? AbortSignal.any(present) : present[0];
    const t0 = performance.now();
    // While someone waits for a slot, a conversation that finishes answering is evicted (see `wrap`).
    const waiting = this.llm.activeConversations >= this.llm.maxConversations;
    if (waiting) this.slotWaiters++;
    let inner: Conversation;
    try {
      inner = await this.llm.openConversation({
        id,
        embeddings: image.data,
        embeddingCount: image.count,
        history: options.history,
        systemPrompt: options.systemPrompt ?? this.options.systemPrompt,
        signal,
      });
    } catch (err) {
      if (isRegionVqaError(err) && err.code === "aborted" && !options.signal?.aborted) {
        throw new RegionVqaError(
          "overloaded",
          `all ${this.llm.maxConversations} conversation slots are busy; try again shortly`,
          { retryAfterSeconds: Math.max(1, Math.ceil((slotWaitMs ?? 1000) / 1000)) },
        );
      }
      throw err;
    } finally {
      if (waiting) this.slotWaiters--;
    }
    this.options.onStage("prefill", performance.now() - t0);
    const conversation = this.wrap(inner, options.afterTurn);
    if (options.register !== false) this.entries.set(id, { conversation, lastUsed: Date.now(), busy: 0 });
    return conversation;
  }

  /** Closes the least recently used registered conversation that is not answering, if any. */
  private async evictIdle(): Promise<void> {
    let victim: [string, Entry] | undefined;
    for (const entry of this.entries) {
      if (entry[1].busy === 0 && (!victim || entry[1].lastUsed < victim[1].lastUsed)) victim = entry;
    }
    if (!victim) return;
    this.options.logger.info(`evicting idle conversation ${victim[0]} to free a slot`);
    await victim[1].conversation.dispose().catch(() => undefined);
  }

  /** Checks questions, keeps the idle clock fresh and counts answers in progress. */
  private wrap(inner: Conversation, afterTurn?: (conversation: Conversation) => Promise<void>): Conversation {
    const touch = (): void => {
      const e = this.entries.get(inner.id);
      if (e) e.lastUsed = Date.now();
    };
    const conversation: Conversation = {
      id: inner.id,
      get turns(): readonly Turn[] {
        return inner.turns;
      },
      ask: (question: string, options?: GenerationOptions): AnswerStream => {
        checkQuestion(question, this.options.maxQuestionChars);
        touch();
        const stream = inner.ask(question, options);
        const e = this.entries.get(inner.id);
        if (e) e.busy++;
        const done = (): void => {
          if (e) e.busy--;
          touch();
          if (this.slotWaiters > 0) void this.evictIdle();
        };
        void stream.result.then(done, done);
        if (!afterTurn) return stream;
        const recorded = stream.result.then(async (result) => {
          await afterTurn(conversation).catch(() => undefined);
          return result;
        });
        return { [Symbol.asyncIterator]: () => stream[Symbol.asyncIterator](), result: recorded };
      },
      dispose: async (): Promise<void> => {
        this.entries.delete(inner.id);
        await inner.dispose();
      },
    };
    return conversation;
  }

  private async closeIdle(ttlMs: number): Promise<void> {
    const now = Date.now();
    for (const [id, entry] of this.entries) {
      if (entry.busy === 0 && now - entry.lastUsed > ttlMs) {
        this.options.logger.info(`closing idle conversation ${id}`);
        await entry.conversation.dispose().catch(() => undefined);
      }
    }
  }

  /** Ends every conversation and the sweep. */
  async dispose(): Promise<void> {
    clearInterval(this.sweepTimer);
    await Promise.all([...this.entries.values()].map((e) => e.conversation.dispose().catch(() => undefined)));
    this.entries.clear();
  }
}
