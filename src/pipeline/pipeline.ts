import { createHash, randomUUID } from "node:crypto";
import os from "node:os";
import { isRegionVqaError, RegionVqaError } from "../common/errors.js";
import type { Tensor } from "../common/tensor.js";
import { LlavaModel, type LlmGpu } from "../llm/index.js";
import { checkProjectorWidths, LlavaProjector } from "../projector/index.js";
import {
  AlphaClipEncoder,
  DEFAULT_DECODE_LIMITS,
  decodeImage,
  llavaAlphaFromMask,
  preprocessImageForLlava,
  regionToMask,
  type DecodeLimits,
  type DecodedImage,
  type Mask,
  type Region,
  type RgbImage,
} from "../vision/index.js";
import { ByteLruCache } from "./lru-cache.js";
import type {
  AnswerResult,
  AnswerStream,
  Conversation,
  GenerationOptions,
  ModelsInfo,
  OpenConversationOptions,
  RegionVqaPipeline,
  Turn,
} from "./types.js";

/** The stages whose timings the pipeline reports (to logs, metrics and benchmarks). */
export type PipelineStage = "decode" | "preprocess" | "encode" | "project" | "prefill";

export interface PipelineLogger {
  info(message: string): void;
  warn(message: string): void;
}

export interface PipelineOptions {
  /** Alpha-CLIP model folder (`convert-vision` output), or a fused vision+projector folder. */
  vision: string;
  /** Projector: mmproj GGUF, LLaVA checkpoint or projector folder. Not needed with a fused vision folder. */
  projector?: string;
  /** LLaMA-family GGUF. */
  llm: string;
  /** Name shown to API clients. */
  modelId?: string;
  /** ONNX Runtime device for vision and projector. Default "auto" (CUDA when usable, else CPU). */
  device?: "auto" | "cuda" | "cpu";
  /** llama.cpp backend. Default false (CPU). */
  gpu?: LlmGpu;
  /** ONNX Runtime intra-op threads. Default: the machine's cores. */
  visionThreads?: number;
  /** llama.cpp threads. Default 1 (docs/reference.md section 4: spinning thread pools on a small shared CPU). */
  llmThreads?: number;
  contextSize?: number;
  batchSize?: number;
  /**
   * Conversations holding a KV cache at once. Default 4. When all are taken, a new one evicts the
   * least recently used conversation that is not answering; if all are answering it waits up to
   * `slotWaitMs` (default 10 s) and then fails with `overloaded`.
   */
  maxConversations?: number;
  slotWaitMs?: number;
  /** Bytes of projected image embeddings kept for reuse. Default 256 MiB. */
  visionCacheBytes?: number;
  /** Idle conversations are closed after this long. Default 10 minutes. */
  conversationTtlMs?: number;
  decodeLimits?: DecodeLimits;
  /** Most regions in one caption request. Default 16. */
  maxRegions?: number;
  /** Most characters in one question. Default 4000. */
  maxQuestionChars?: number;
  systemPrompt?: string;
  /** Questions asked for captions. */
  captionPrompts?: { short: string; long: string };
  logger?: PipelineLogger;
  /** Called with each stage's duration in ms (metrics hook). */
  onStage?: (stage: PipelineStage, ms: number) => void;
  /** Called on each vision-cache lookup (metrics hook). */
  onCache?: (hit: boolean) => void;
}

export const DEFAULT_CAPTION_PROMPTS = {
  short: "Describe the highlighted region.",
  long: "Describe the highlighted region in detail.",
};

const silentLogger: PipelineLogger = { info: () => undefined, warn: () => undefined };

interface ConversationEntry {
  conversation: Conversation;
  lastUsed: number;
  /** Answers being generated right now (a busy conversation is never evicted). */
  busy: number;
}

/** Projected image embeddings of one region, ready for the LLM: [tokens, n_embd]. */
interface RegionEmbeddings {
  data: Float32Array;
  count: number;
}

function sha256(...parts: Uint8Array[]): string {
  const h = createHash("sha256");
  for (const p of parts) h.update(p);
  return h.digest("hex");
}

/** Splits [N, T, W] into N row-major [T, W] blocks (views, no copy). */
function splitBatch(t: Tensor): RegionEmbeddings[] {
  const [n, tokens, width] = t.shape;
  const out: RegionEmbeddings[] = [];
  for (let i = 0; i < n; i++) {
    out.push({ data: t.data.subarray(i * tokens * width, (i + 1) * tokens * width), count: tokens });
  }
  return out;
}

/**
 * The composed pipeline: bytes -> decode -> region mask -> LLaVA preprocessing -> Alpha-CLIP (worker)
 * -> projector -> LLM conversation. Owns the vision cache (content-hash keyed, byte-bounded LRU) and
 * the registry of live conversations (bounded by the LLM's sequence pool, closed when idle too long).
 */
export class LocalRegionVqaPipeline implements RegionVqaPipeline {
  readonly models: ModelsInfo;
  private readonly cache: ByteLruCache<RegionEmbeddings>;
  private readonly conversations = new Map<string, ConversationEntry>();
  /** New conversations waiting for a free LLM slot. */
  private slotWaiters = 0;
  private readonly sweepTimer: NodeJS.Timeout;
  private disposed = false;

  private constructor(
    private readonly options: PipelineOptions,
    private readonly encoder: AlphaClipEncoder,
    private readonly projector: LlavaProjector | undefined,
    private readonly llm: LlavaModel,
    private readonly logger: PipelineLogger,
  ) {
    const modelKey = `${options.vision}|${options.projector ?? "fused"}`;
    this.models = {
      id: options.modelId ?? "region-vqa",
      vision: options.vision,
      projector: options.projector ?? "(fused)",
      llm: options.llm,
    };
    this.modelKey = sha256(new TextEncoder().encode(modelKey));
    this.cache = new ByteLruCache(options.visionCacheBytes ?? 256 * 1024 * 1024, (v) => v.data.byteLength);
    const ttl = options.conversationTtlMs ?? 10 * 60_000;
    this.sweepTimer = setInterval(() => void this.closeIdle(ttl), Math.min(ttl, 30_000));
    this.sweepTimer.unref();
  }

  private readonly modelKey: string;

  static async create(options: PipelineOptions): Promise<LocalRegionVqaPipeline> {
    const logger = options.logger ?? silentLogger;
    const device = options.device ?? "auto";
    const visionThreads = options.visionThreads ?? os.availableParallelism();
    const encoder = await AlphaClipEncoder.load(options.vision, {
      device,
      threads: visionThreads,
      logger,
    });
    let projector: LlavaProjector | undefined;
    let llm: LlavaModel | undefined;
    try {
      const fused = encoder.manifest.kind === "alpha-clip-llava-fused";
      if (!fused) {
        if (!options.projector) {
          throw new RegionVqaError(
            "model_invalid",
            `the vision folder ${options.vision} has no projector; give a projector file (--projector)`,
          );
        }
        // The projector runs where the encoder's auto/cuda/cpu choice landed.
        projector = await LlavaProjector.load(options.projector, {
          threads: visionThreads,
          device: encoder.provider,
        });
      }
      llm = await LlavaModel.load({
        modelPath: options.llm,
        gpu: options.gpu ?? false,
        threads: options.llmThreads ?? 1,
        contextSize: options.contextSize,
        batchSize: options.batchSize,
        maxConversations: options.maxConversations ?? 4,
        template: options.systemPrompt !== undefined ? { systemPrompt: options.systemPrompt } : undefined,
      });
      const encoderWidth = encoder.config.width;
      if (projector) {
        checkProjectorWidths(projector, { encoderWidth, llmEmbeddingLength: llm.embeddingSize });
      } else {
        const outWidth = Number(encoder.config.projectorOutWidth ?? encoder.config.outWidth ?? NaN);
        if (Number.isFinite(outWidth) && outWidth !== llm.embeddingSize) {
          throw new RegionVqaError(
            "model_mismatch",
            `the fused vision model outputs ${outWidth}-wide embeddings but the LLM takes ${llm.embeddingSize}`,
          );
        }
      }
      logger.info(
        `pipeline ready: vision ${options.vision} (${encoder.provider}), projector ${options.projector ?? "fused"}, llm ${options.llm}`,
      );
      return new LocalRegionVqaPipeline(options, encoder, projector, llm, logger);
    } catch (err) {
      await projector?.dispose().catch(() => undefined);
      await llm?.dispose().catch(() => undefined);
      await encoder.dispose().catch(() => undefined);
      throw err;
    }
  }

  private timed<T>(stage: PipelineStage, work: () => Promise<T> | T): Promise<T> {
    const t0 = performance.now();
    const done = (): void => this.options.onStage?.(stage, performance.now() - t0);
    return Promise.resolve().then(work).finally(done);
  }

  private async decode(image: Uint8Array): Promise<DecodedImage> {
    return this.timed("decode", () => decodeImage(image, this.options.decodeLimits ?? DEFAULT_DECODE_LIMITS));
  }

  /**
   * Image + regions -> one embedding block per region. Regions already in the cache skip the encoder;
   * the others are encoded together in one batch.
   */
  async embedRegions(
    image: Uint8Array,
    regions: Region[],
    alreadyDecoded?: RgbImage,
  ): Promise<RegionEmbeddings[]> {
    this.assertOpen();
    const maxRegions = this.options.maxRegions ?? 16;
    if (regions.length === 0) throw new RegionVqaError("invalid_request", "no region given");
    if (regions.length > maxRegions) {
      throw new RegionVqaError(
        "too_many_regions",
        `${regions.length} regions in one request; the limit is ${maxRegions}`,
        { limit: maxRegions },
      );
    }
    const decoded = alreadyDecoded ?? (await this.decode(image));
    const imageHash = sha256(image);
    const masks: Mask[] = regions.map((r) => regionToMask(r, decoded.width, decoded.height));
    const keys = masks.map(
      (m, i) => `${this.modelKey}:${imageHash}:${regions[i].kind === "whole" ? "whole" : sha256(m.data)}`,
    );
    const results: Array<RegionEmbeddings | undefined> = keys.map((k) => {
      const hit = this.cache.get(k);
      this.options.onCache?.(hit !== undefined);
      return hit;
    });
    const todo = results.flatMap((r, i) => (r ? [] : [i]));
    if (todo.length > 0) {
      const size = this.encoder.imageSize;
      const plane = size * size;
      // The image is padded and resized once; each region only adds its alpha plane.
      const { pixelValues, alpha } = await this.timed("preprocess", () => {
        const alpha = new Float32Array(todo.length * plane);
        todo.forEach((i, j) => {
          // "Whole image" is the reference's no-mask path: alpha is foreground everywhere, padding included.
          const a = llavaAlphaFromMask(regions[i].kind === "whole" ? null : masks[i], size);
          alpha.set(a.alpha.data, j * plane);
        });
        return { pixelValues: preprocessImageForLlava(decoded, size).pixelValues, alpha };
      });
      const encoded = await this.timed("encode", () =>
        this.encoder.encode({
          pixelValues,
          alpha: { data: alpha, shape: [todo.length, 1, size, size] },
        }),
      );
      let projected: Tensor;
      if (encoded.projected) {
        projected = encoded.projected;
      } else if (encoded.features && this.projector) {
        const features = encoded.features;
        projected = await this.timed("project", () => this.projector!.project(features));
      } else {
        throw new RegionVqaError(
          "model_invalid",
          "the vision model returned neither features nor embeddings",
        );
      }
      splitBatch(projected).forEach((emb, j) => {
        const i = todo[j];
        // Own copy per region so that evicting or transferring one never touches another.
        const own = { data: emb.data.slice(), count: emb.count };
        results[i] = own;
        this.cache.set(keys[i], own);
      });
    }
    return results as RegionEmbeddings[];
  }

  async openConversation(
    image: Uint8Array,
    region: Region,
    options: OpenConversationOptions = {},
  ): Promise<Conversation> {
    const [embeddings] = await this.embedRegions(image, [region], options.decoded);
    if (options.signal?.aborted) throw new RegionVqaError("aborted", "the request was cancelled");
    return this.startConversation(embeddings, options);
  }

  private async startConversation(
    embeddings: RegionEmbeddings,
    options: OpenConversationOptions & { register?: boolean; waitForSlot?: boolean } = {},
  ): Promise<Conversation> {
    for (const turn of options.history ?? []) this.checkQuestion(turn.question);
    const id = `conv_${randomUUID().replace(/-/g, "")}`;
    if (this.llm.activeConversations >= this.llm.maxConversations) await this.evictIdleConversation();
    // Wait for a slot at most slotWaitMs (callers that must not fail, like captions, wait as long as
    // their own signal allows); then give up with `overloaded` so the server can answer 503.
    const slotWaitMs = options.waitForSlot ? undefined : (this.options.slotWaitMs ?? 10_000);
    const signals = [options.signal, slotWaitMs !== undefined ? AbortSignal.timeout(slotWaitMs) : undefined];
    const present = signals.filter((x): x is AbortSignal => x !== undefined);
    const signal = present.length > 1 ? AbortSignal.any(present) : present[0];
    const t0 = performance.now();
    let inner: Conversation;
    // While someone waits for a slot, a conversation that finishes answering is evicted (see wrap).
    const waiting = this.llm.activeConversations >= this.llm.maxConversations;
    if (waiting) this.slotWaiters++;
    try {
      inner = await this.llm.openConversation({
        id,
        embeddings: embeddings.data,
        embeddingCount: embeddings.count,
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
    this.options.onStage?.("prefill", performance.now() - t0);
    const conversation = this.wrap(inner);
    if (options.register !== false)
      this.conversations.set(id, { conversation, lastUsed: Date.now(), busy: 0 });
    return conversation;
  }

  /** Closes the least recently used registered conversation that is not generating, if any. */
  private async evictIdleConversation(): Promise<boolean> {
    let victim: [string, ConversationEntry] | undefined;
    for (const entry of this.conversations) {
      if (entry[1].busy === 0 && (!victim || entry[1].lastUsed < victim[1].lastUsed)) victim = entry;
    }
    if (!victim) return false;
    this.logger.info(`evicting idle conversation ${victim[0]} to free a slot`);
    await victim[1].conversation.close().catch(() => undefined);
    return true;
  }

  /** Validates questions, keeps the registry's idle clock fresh and counts answers in progress. */
  private wrap(inner: Conversation): Conversation {
    const entry = (): ConversationEntry | undefined => this.conversations.get(inner.id);
    const touch = (): void => {
      const e = entry();
      if (e) e.lastUsed = Date.now();
    };
    return {
      id: inner.id,
      get turns(): readonly Turn[] {
        return inner.turns;
      },
      ask: (question: string, options?: GenerationOptions): AnswerStream => {
        this.checkQuestion(question);
        touch();
        const stream = inner.ask(question, options);
        const e = entry();
        if (e) e.busy++;
        const done = (): void => {
          if (e) e.busy--;
          touch();
          if (this.slotWaiters > 0) void this.evictIdleConversation();
        };
        void stream.result.then(done, done);
        return stream;
      },
      close: async (): Promise<void> => {
        this.conversations.delete(inner.id);
        await inner.close();
      },
    };
  }

  private checkQuestion(question: string): void {
    const max = this.options.maxQuestionChars ?? 4000;
    if (typeof question !== "string" || question.trim() === "") {
      throw new RegionVqaError("invalid_request", "the question is empty");
    }
    if (question.length > max) {
      throw new RegionVqaError(
        "question_too_long",
        `the question has ${question.length} characters; the limit is ${max}`,
        { limit: max },
      );
    }
  }

  getConversation(id: string): Conversation | undefined {
    const entry = this.conversations.get(id);
    if (entry) entry.lastUsed = Date.now();
    return entry?.conversation;
  }

  async captionRegions(
    image: Uint8Array,
    regions: Region[],
    options: GenerationOptions & { detail?: "short" | "long"; decoded?: RgbImage } = {},
  ): Promise<AnswerResult[]> {
    const embeddings = await this.embedRegions(image, regions, options.decoded);
    const prompts = this.options.captionPrompts ?? DEFAULT_CAPTION_PROMPTS;
    const question = options.detail === "long" ? prompts.long : prompts.short;
    const { detail: _detail, decoded: _decoded, ...generation } = options;
    // One failed region stops the others at once, so no slot keeps generating for a failed request.
    const stopAll = new AbortController();
    const signal = generation.signal ? AbortSignal.any([generation.signal, stopAll.signal]) : stopAll.signal;
    return Promise.all(
      embeddings.map(async (emb) => {
        try {
          const conversation = await this.startConversation(emb, {
            register: false,
            waitForSlot: true,
            signal,
          });
          try {
            return await conversation.ask(question, { ...generation, signal }).result;
          } finally {
            await conversation.close();
          }
        } catch (err) {
          stopAll.abort();
          throw err;
        }
      }),
    );
  }

  /** Live conversations and vision-cache counters, for metrics and benchmarks. */
  stats(): { conversations: number; cache: ReturnType<ByteLruCache<RegionEmbeddings>["stats"]> } {
    return { conversations: this.conversations.size, cache: this.cache.stats() };
  }

  /** Drops every cached region embedding (e.g. after swapping models, or for cold benchmarks). */
  clearVisionCache(): void {
    this.cache.clear();
  }

  private async closeIdle(ttlMs: number): Promise<void> {
    const now = Date.now();
    for (const [id, entry] of this.conversations) {
      // A conversation answering right now is not idle, however long its answer takes.
      if (entry.busy === 0 && now - entry.lastUsed > ttlMs) {
        this.logger.info(`closing idle conversation ${id}`);
        await entry.conversation.close().catch(() => undefined);
      }
    }
  }

  private assertOpen(): void {
    if (this.disposed) throw new RegionVqaError("aborted", "the pipeline is shut down");
  }

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    clearInterval(this.sweepTimer);
    await Promise.all(
      [...this.conversations.values()].map((e) => e.conversation.close().catch(() => undefined)),
    );
    this.conversations.clear();
    await this.llm.dispose();
    await this.projector?.dispose();
    await this.encoder.dispose();
  }
}

export function createPipeline(options: PipelineOptions): Promise<LocalRegionVqaPipeline> {
  return LocalRegionVqaPipeline.create(options);
}
