import { existsSync } from "node:fs";
import {
  getLlama,
  LlamaLogLevel,
  type Llama,
  type LlamaContext,
  type LlamaContextSequence,
  type LlamaModel,
  type Token,
} from "node-llama-cpp";
import { RegionVqaError, isRegionVqaError } from "../common/errors.js";
import { hardwareGpuPresent } from "../common/gpu.js";
import type { Turn } from "./types.js";
import { LlavaConversation } from "./conversation.js";
import { assertEmbeddingSupport, type NativeContextInfo } from "./native.js";
import { LlavaPrompt, type LlavaPromptTemplate } from "./prompt.js";

export type LlmGpu = false | "auto" | "cuda" | "vulkan" | "metal";
/** Every `LlmGpu` value, for flags and config checks. */
export const LLM_GPUS: readonly LlmGpu[] = [false, "auto", "cuda", "vulkan", "metal"];

export interface LlavaModelOptions {
  /** A LLaMA-family GGUF (e.g. LLaVA-1.5's Vicuna). */
  modelPath: string;
  /**
   * Compute backend. Default "auto": CUDA, Vulkan or Metal when the host has a hardware GPU (a software
   * Vulkan driver is not one), else the CPU build.
   */
  gpu?: LlmGpu;
  /** Layers to offload when a GPU is used. Default "auto". */
  gpuLayers?: number | "auto" | "max";
  /**
   * CPU threads for llama.cpp. Default 1: on a small shared CPU, llama.cpp's spinning thread pool with
   * 2 threads is many times slower than 1 as soon as the other core is busy (see bench/llm.ts).
   */
  threads?: number;
  /** Context positions per conversation (the image takes 576 of them). Default min(4096, trained). */
  contextSize?: number;
  /** Tokens/embeddings per decode call. Default 512. */
  batchSize?: number;
  /** Conversations that can hold a KV cache at once (sequences of the one context). Default 1. */
  maxConversations?: number;
  /** Prompt template overrides (system prompt, turn formats). */
  template?: Partial<LlavaPromptTemplate>;
  /** llama.cpp log level. Default "warn". */
  logLevel?: "error" | "warn" | "info" | "debug";
  /** Reuse an existing node-llama-cpp instance instead of creating one. */
  llama?: Llama;
}

export interface OpenLlavaConversationOptions {
  /** Projected image features, row-major `count x embeddingSize` (e.g. 576 x 4096). */
  embeddings?: Float32Array;
  /** Rows in `embeddings`; default embeddings.length / embeddingSize. */
  embeddingCount?: number;
  /** Earlier turns to replay after the image (e.g. an OpenAI-style history). */
  history?: readonly Turn[];
  systemPrompt?: string;
  template?: Partial<LlavaPromptTemplate>;
  id?: string;
  /** Gives up waiting for a free conversation slot. */
  signal?: AbortSignal;
}

/**
 * node-llama-cpp for `gpu`. "auto" is decided here, before any build loads: a llama.cpp build loaded
 * into the process stays there, and the embeddings addon refuses to guess between two. node-llama-cpp's
 * own "auto" would load the Vulkan build on a host whose only Vulkan driver is a software one (which
 * ggml then ignores), so without a hardware GPU "auto" is the CPU build.
 */
async function startLlama(gpu: LlmGpu, logLevel: LlamaLogLevel): Promise<Llama> {
  const chosen = gpu === "auto" && !hardwareGpuPresent().present ? false : gpu;
  try {
    return await getLlama({ gpu: chosen, build: "never", logLevel });
  } catch (err) {
    throw new RegionVqaError(
      "device_unavailable",
      `llama.cpp could not start with gpu=${String(gpu)}: ${(err as Error).message}`,
    );
  }
}

const logLevels: Record<NonNullable<LlavaModelOptions["logLevel"]>, LlamaLogLevel> = {
  error: LlamaLogLevel.error,
  warn: LlamaLogLevel.warn,
  info: LlamaLogLevel.info,
  debug: LlamaLogLevel.debug,
};

/**
 * A LLaVA language model in llama.cpp: one model, one context whose sequences are a bounded pool of
 * conversation slots. Dispose it explicitly (`dispose()`), as with node-llama-cpp objects.
 */
export class LlavaModel {
  readonly llama: Llama;
  readonly model: LlamaModel;
  readonly context: LlamaContext;
  readonly native: NativeContextInfo;
  /** Names of the GPU devices llama.cpp uses (none on the CPU build). */
  readonly gpuDevices: readonly string[];
  private readonly options: LlavaModelOptions;
  private readonly ownsLlama: boolean;
  private readonly idle: LlamaContextSequence[] = [];
  private readonly waiting: Array<{
    resolve: (s: LlamaContextSequence) => void;
    reject: (e: unknown) => void;
  }> = [];
  private readonly open = new Set<LlavaConversation>();
  private disposed = false;

  private constructor(
    llama: Llama,
    model: LlamaModel,
    context: LlamaContext,
    native: NativeContextInfo,
    gpuDevices: readonly string[],
    options: LlavaModelOptions,
    ownsLlama: boolean,
  ) {
    this.llama = llama;
    this.model = model;
    this.context = context;
    this.native = native;
    this.gpuDevices = gpuDevices;
    this.options = options;
    this.ownsLlama = ownsLlama;
  }

  static async load(options: LlavaModelOptions): Promise<LlavaModel> {
    if (!existsSync(options.modelPath)) {
      throw new RegionVqaError("model_not_found", `LLM file not found: ${options.modelPath}`);
    }
    const threads = options.threads ?? 1;
    const maxConversations = options.maxConversations ?? 1;
    const batchSize = options.batchSize ?? 512;
    for (const [name, value] of Object.entries({ threads, maxConversations, batchSize })) {
      if (!Number.isInteger(value) || value < 1) {
        throw new RegionVqaError("invalid_request", `${name} must be a positive integer, got ${value}`);
      }
    }
    const ownsLlama = options.llama === undefined;
    const gpu = options.gpu ?? "auto";
    const llama = options.llama ?? (await startLlama(gpu, logLevels[options.logLevel ?? "warn"]));
    let model: LlamaModel | undefined;
    try {
      model = await llama.loadModel({
        modelPath: options.modelPath,
        // "auto" fits as many layers as free GPU memory allows (node-llama-cpp's own estimate).
        gpuLayers: llama.gpu === false ? 0 : (options.gpuLayers ?? "auto"),
      });
      const contextSize = options.contextSize ?? Math.min(4096, model.trainContextSize);
      const context = await model.createContext({
        contextSize,
        batchSize,
        sequences: maxConversations,
        threads,
      });
      let native: NativeContextInfo;
      try {
        native = await assertEmbeddingSupport(context, model);
      } catch (err) {
        await context.dispose();
        throw err;
      }
      const gpuDevices = llama.gpu === false ? [] : await llama.getGpuDeviceNames();
      return new LlavaModel(
        llama,
        model,
        context,
        native,
        gpuDevices,
        { ...options, gpu, threads, batchSize, maxConversations },
        ownsLlama,
      );
    } catch (err) {
      await model?.dispose().catch(() => undefined);
      if (ownsLlama) await llama.dispose().catch(() => undefined);
      if (isRegionVqaError(err)) throw err;
      throw new RegionVqaError(
        "model_invalid",
        `cannot load the LLM ${options.modelPath}: ${(err as Error).message}`,
      );
    }
  }

  /** The llama.cpp build in use: "cuda", "vulkan", "metal", or false for the CPU build. */
  get backend(): Llama["gpu"] {
    return this.llama.gpu;
  }

  /** Where it runs, for logs and /readyz: "cpu", or e.g. "cuda (NVIDIA H200)". */
  get device(): string {
    if (this.llama.gpu === false) return "cpu";
    return `${this.llama.gpu} (${this.gpuDevices.join(", ") || "no GPU device"})`;
  }

  /** Width of one embedding row the model takes (4096 for LLaVA-1.5-7B). */
  get embeddingSize(): number {
    return this.model.embeddingVectorSize;
  }

  /** Context positions per conversation. */
  get contextSize(): number {
    return this.context.contextSize;
  }

  get maxConversations(): number {
    return this.context.totalSequences;
  }

  get activeConversations(): number {
    return this.open.size;
  }

  tokenize(text: string): Token[] {
    return this.model.tokenize(text, false);
  }

  /**
   * Opens a conversation: waits for a free slot, then evaluates the system prompt, the image rows and
   * any history. The returned conversation holds its slot until `close()`.
   */
  async openConversation(options: OpenLlavaConversationOptions = {}): Promise<LlavaConversation> {
    const prompt = new LlavaPrompt(this.model, {
      ...this.options.template,
      ...options.template,
      ...(options.systemPrompt !== undefined ? { systemPrompt: options.systemPrompt } : {}),
    });
    let image: { embeddings: Float32Array; count: number } | undefined;
    if (options.embeddings !== undefined) {
      const count = options.embeddingCount ?? options.embeddings.length / this.embeddingSize;
      if (
        !Number.isInteger(count) ||
        count <= 0 ||
        count * this.embeddingSize !== options.embeddings.length
      ) {
        throw new RegionVqaError(
          "model_mismatch",
          `image embeddings have ${options.embeddings.length} values: not a whole number of ${this.embeddingSize}-wide rows` +
            (options.embeddingCount !== undefined ? ` x ${options.embeddingCount}` : ""),
        );
      }
      image = { embeddings: options.embeddings, count };
    }
    for (const turn of options.history ?? []) {
      if (typeof turn?.question !== "string" || typeof turn?.answer !== "string") {
        throw new RegionVqaError(
          "invalid_request",
          "each history turn needs a question and an answer string",
        );
      }
    }
    const sequence = await this.acquireSequence(options.signal);
    const conversation: LlavaConversation = new LlavaConversation({
      id: options.id,
      sequence,
      model: this.model,
      prompt,
      release: (s): Promise<void> => this.releaseSequence(s, conversation),
    });
    this.open.add(conversation);
    try {
      await conversation.start(image, options.history ?? []);
    } catch (err) {
      await conversation.dispose();
      throw err;
    }
    return conversation;
  }

  private async acquireSequence(signal?: AbortSignal): Promise<LlamaContextSequence> {
    if (this.disposed) throw new RegionVqaError("invalid_request", "the LLM is disposed");
    const idle = this.idle.pop();
    if (idle) return idle;
    if (this.context.sequencesLeft > 0) {
      return this.context.getSequence({
        contextShift: {
          // Never let node-llama-cpp drop the start of a conversation (the image): we stop earlier.
          strategy: () => {
            throw new RegionVqaError("context_full", "the conversation does not fit in the context");
          },
        },
      });
    }
    if (signal?.aborted) throw new RegionVqaError("aborted", "gave up waiting for a free conversation slot");
    return new Promise<LlamaContextSequence>((resolve, reject) => {
      const waiter = {
        resolve: (s: LlamaContextSequence) => {
          signal?.removeEventListener("abort", onAbort);
          resolve(s);
        },
        reject: (e: unknown) => {
          signal?.removeEventListener("abort", onAbort);
          reject(e);
        },
      };
      const onAbort = (): void => {
        const at = this.waiting.indexOf(waiter);
        if (at >= 0) this.waiting.splice(at, 1);
        reject(new RegionVqaError("aborted", "gave up waiting for a free conversation slot"));
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.waiting.push(waiter);
    });
  }

  private async releaseSequence(
    sequence: LlamaContextSequence,
    conversation: LlavaConversation,
  ): Promise<void> {
    this.open.delete(conversation);
    if (this.disposed || sequence.disposed) return;
    try {
      await sequence.clearHistory();
    } catch {
      await sequence.dispose().catch(() => undefined);
      const next = this.waiting.shift();
      if (next) this.acquireSequence().then(next.resolve, next.reject);
      return;
    }
    const next = this.waiting.shift();
    if (next) next.resolve(sequence);
    else this.idle.push(sequence);
  }

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    for (const waiter of this.waiting.splice(0)) {
      waiter.reject(new RegionVqaError("invalid_request", "the LLM was disposed"));
    }
    await Promise.all([...this.open].map((c) => c.dispose().catch(() => undefined)));
    await this.context.dispose();
    await this.model.dispose();
    if (this.ownsLlama) await this.llama.dispose();
  }
}
