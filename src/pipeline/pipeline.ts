/**
 * The composed pipeline: a `RegionEmbedder` (bytes -> region embeddings, cached) feeding a
 * `ConversationRegistry` (conversations on the LLM's slots). This file only wires them together and
 * owns their lifetime; the work is in those two.
 */
import { createHash } from "node:crypto";
import { modelFingerprint } from "../common/fingerprint.js";
import type { Transcript } from "../shared-state/index.js";
import { RegionVqaError } from "../common/errors.js";
import { LlavaModel, type AnswerResult, type Conversation, type GenerationOptions } from "../llm/index.js";
import {
  NO_SEGMENTER_MESSAGE,
  SamSegmenter,
  type SegmentPrompt,
  type SegmentResult,
} from "../segmenter/index.js";
import { sha256Hex } from "../common/imaging/kernels.js";
import { decodeImage, type DecodedImage, type Region, type RgbImage } from "../vision/index.js";
import { checkLabels, l2Normalize, RegionClassifier, type ClassifyResult } from "./region-classifier.js";
import { CONVERSATION_ID_PATTERN, ConversationRegistry } from "./conversation-registry.js";
import { resolvePipelineOptions, type PipelineOptions, type ResolvedPipelineOptions } from "./options.js";
import { RegionEmbedder, type RegionEmbeddings } from "./region-embedder.js";
import type { ConversationEngine, RegionEncoder } from "./ports.js";
import type {
  ModelsInfo,
  OpenConversationOptions,
  PipelineStats,
  ResumedConversation,
  Turn,
  RegionVqaPipeline,
  SegmentOptions,
} from "./types.js";

/** What to tell a user who classifies when no text tower is loaded. */
export const NO_TEXT_MODEL_MESSAGE =
  "No CLIP text tower is loaded, so labels cannot be compared with regions: run `region-vqa pull clip-text-l14-336` (or pull the alpha-llava-7b preset again) or start with --text <folder> (the bundled shapes model has one).";
/** Most texts in one `embedTexts` call (OpenAI's limit for one embeddings request). */
export const MAX_EMBED_TEXTS = 2048;
/** Texts encoded per text-encoder batch by `embedTexts`. */
const EMBED_TEXT_BATCH = 64;

export class LocalRegionVqaPipeline implements RegionVqaPipeline {
  readonly models: ModelsInfo;
  private disposed = false;
  /** Rebuilds in progress by conversation id: concurrent follow-ups share one. */
  private readonly rebuilding = new Map<string, Promise<Conversation | undefined>>();

  private constructor(
    private readonly options: ResolvedPipelineOptions,
    private readonly embedder: RegionEmbedder,
    private readonly llm: ConversationEngine,
    private readonly conversations: ConversationRegistry,
    private readonly segmenter: SamSegmenter | undefined,
    private readonly classifier: RegionClassifier | undefined,
    /**
     * Identity of the models a conversation depends on (vision, projector, LLM content fingerprints):
     * a transcript is only continued by a replica whose identity is the same.
     */
    private readonly conversationModels: string,
  ) {
    this.models = {
      id: options.modelId,
      vision: options.vision,
      projector: options.projector ?? "(fused)",
      llm: options.llm,
      ...(segmenter ? { segmenter: options.segmenter } : {}),
      ...(classifier ? { text: options.text } : {}),
      devices: {
        vision: embedder.device,
        llm: llm.device,
        ...(segmenter ? { segmenter: segmenter.device } : {}),
        ...(classifier ? { text: classifier.device } : {}),
      },
    };
  }

  static async create(options: PipelineOptions): Promise<LocalRegionVqaPipeline> {
    const o = resolvePipelineOptions(options);
    const embedder = await RegionEmbedder.load(o, o.sharedState);
    let llm: LlavaModel | undefined;
    let segmenter: SamSegmenter | undefined;
    let classifier: RegionClassifier | undefined;
    let conversationModels = "";
    try {
      if (o.text) {
        classifier = await RegionClassifier.load(o.text, {
          device: embedder.provider,
          threads: o.visionThreads,
        });
      }
      if (o.segmenter) {
        // Same device as the vision encoder: both are ONNX Runtime sessions.
        segmenter = await SamSegmenter.load(o.segmenter, {
          device: embedder.provider,
          threads: o.visionThreads,
          logger: o.logger,
          cacheBytes: o.segmenterCacheBytes,
          shared: o.sharedState,
          onSharedLookup: (hit) => o.onCache(hit, "shared_segmenter"),
        });
      }
      llm = await LlavaModel.load({
        modelPath: o.llm,
        gpu: o.gpu,
        threads: o.llmThreads,
        contextSize: o.contextSize,
        batchSize: o.batchSize,
        maxConversations: o.maxConversations,
        template: o.systemPrompt !== undefined ? { systemPrompt: o.systemPrompt } : undefined,
      });
      embedder.assertFits(llm.embeddingSize);
      conversationModels = createHash("sha256")
        .update(`${embedder.modelKey}|${await modelFingerprint(o.llm)}`)
        .digest("hex");
      if (o.warmUp ?? embedder.provider !== "cpu") {
        const ms = await embedder.warmUp();
        o.logger.info(`vision warm-up on ${embedder.device}: ${ms.toFixed(0)} ms`);
      }
    } catch (err) {
      await llm?.dispose().catch(() => undefined);
      await segmenter?.dispose().catch(() => undefined);
      await classifier?.dispose().catch(() => undefined);
      await embedder.dispose().catch(() => undefined);
      throw err;
    }
    o.logger.info(
      `pipeline ready: vision ${o.vision} on ${embedder.device}, projector ${o.projector ?? "fused"}, llm ${o.llm} on ${llm.device}` +
        (segmenter ? `, segmenter ${o.segmenter} on ${segmenter.device}` : "") +
        (classifier ? `, text ${o.text} on ${classifier.device}` : ""),
    );
    return new LocalRegionVqaPipeline(
      o,
      embedder,
      llm,
      new ConversationRegistry(llm, o),
      segmenter,
      classifier,
      conversationModels,
    );
  }

  /**
   * The pipeline over engines made elsewhere instead of model files: a fused vision encoder (LLM-ready
   * embeddings out) and a language model. For benchmarks of the server itself (the ceiling part of bench/imaging.ts runs
   * instant stand-ins of the real shapes); no segmenter, text tower or shared state.
   */
  static fromEngines(
    options: Omit<PipelineOptions, "vision" | "llm"> & { modelId?: string },
    engines: { encoder: RegionEncoder; llm: ConversationEngine },
  ): LocalRegionVqaPipeline {
    const o = resolvePipelineOptions({ ...options, vision: "(engine)", llm: "(engine)" });
    const embedder = RegionEmbedder.over(o, engines.encoder, `engines:${engines.encoder.device}`);
    return new LocalRegionVqaPipeline(
      o,
      embedder,
      engines.llm,
      new ConversationRegistry(engines.llm, o),
      undefined,
      undefined,
      `engines:${engines.encoder.device}|${engines.llm.device}`,
    );
  }

  /** Clicks and/or a box on a decoded image -> its mask and the other candidates. */
  async segment(
    image: RgbImage,
    prompt: SegmentPrompt,
    options: SegmentOptions = {},
  ): Promise<SegmentResult> {
    this.assertOpen();
    if (!this.segmenter) throw new RegionVqaError("segmenter_not_installed", NO_SEGMENTER_MESSAGE);
    const t0 = performance.now();
    try {
      const result = await this.segmenter.segment(image, prompt, options);
      this.options.onCache(result.timings.embeddingsCached, "segmenter");
      return result;
    } finally {
      this.options.onStage("segment", performance.now() - t0);
    }
  }

  /** Regions of an image x labels -> Alpha-CLIP zero-shot scores, ranked per region and per label. */
  async classifyRegions(
    image: Uint8Array,
    regions: Region[],
    labels: unknown,
    options: { templates?: unknown; decoded?: RgbImage } = {},
  ): Promise<ClassifyResult> {
    this.assertOpen();
    if (!this.classifier) throw new RegionVqaError("text_model_not_installed", NO_TEXT_MODEL_MESSAGE);
    // Labels are checked (count, text, templates, token length) before any model runs.
    const checked = checkLabels(labels, options.templates);
    this.classifier.checkLabelLengths(checked.labels, checked.templates);
    const blocks = await this.embedRegions(image, regions, options.decoded);
    const embeds = blocks.map((b) => {
      if (!b.imageEmbed) {
        throw new RegionVqaError(
          "model_invalid",
          "The vision model has no image_embed output to classify with.",
        );
      }
      return b.imageEmbed;
    });
    return this.classifier.classify(embeds, labels, options.templates);
  }

  /**
   * Texts -> L2-normalised CLIP text features (cached per text). Refuses an empty list or text
   * (`labels_invalid`), more than MAX_EMBED_TEXTS (`too_many_inputs`) and a text over CLIP's 77 tokens
   * (`label_too_long`, never truncated) before the model runs.
   */
  async embedTexts(texts: string[]): Promise<Float32Array[]> {
    this.assertOpen();
    if (!this.classifier) throw new RegionVqaError("text_model_not_installed", NO_TEXT_MODEL_MESSAGE);
    if (!Array.isArray(texts) || texts.length === 0)
      throw new RegionVqaError("labels_invalid", "Give at least one text to embed.");
    if (texts.length > MAX_EMBED_TEXTS) {
      throw new RegionVqaError(
        "too_many_inputs",
        `${texts.length} inputs; the limit is ${MAX_EMBED_TEXTS}.`,
        { inputs: texts.length, maxInputs: MAX_EMBED_TEXTS },
      );
    }
    texts.forEach((t, i) => {
      if (typeof t !== "string" || t.trim() === "")
        throw new RegionVqaError("labels_invalid", `Input ${i} is empty; every text needs some text.`);
    });
    try {
      this.classifier.checkLabelLengths(texts, ["{}"]);
    } catch (err) {
      if (!(err instanceof RegionVqaError) || err.code !== "label_too_long") throw err;
      const { index, tokens } = err.details as { index: number; tokens: number };
      throw new RegionVqaError(
        "label_too_long",
        `Input ${index} is ${tokens} tokens (start and end included); CLIP reads at most 77. Shorten it; it is not truncated.`,
        err.details,
      );
    }
    const out: Float32Array[] = [];
    for (let i = 0; i < texts.length; i += EMBED_TEXT_BATCH) {
      const { features } = await this.classifier.textFeatures(texts.slice(i, i + EMBED_TEXT_BATCH));
      for (const f of features) out.push(l2Normalize(f));
    }
    return out;
  }

  /** Image + regions -> one embedding block per region (cached; misses are encoded in one batch). */
  async embedRegions(image: Uint8Array, regions: Region[], decoded?: RgbImage): Promise<RegionEmbeddings[]> {
    this.assertOpen();
    if (regions.some((r) => r.kind === "points")) {
      // Clicks become masks first; the decoded image and its key serve the segmenter and the encoder.
      const rgb: RgbImage & Pick<DecodedImage, "sha256"> =
        decoded ?? (await decodeImage(image, this.options.decodeLimits, { pool: this.options.imaging }));
      const imageKey = rgb.sha256 ?? (await sha256Hex(this.options.imaging, image));
      regions = await Promise.all(
        regions.map(async (r) =>
          r.kind === "points"
            ? { kind: "mask" as const, mask: (await this.segment(rgb, r, { imageKey })).mask }
            : r,
        ),
      );
      decoded = rgb;
    }
    return this.embedder.embed(image, regions, decoded);
  }

  async openConversation(
    image: Uint8Array,
    region: Region,
    options: OpenConversationOptions = {},
  ): Promise<Conversation> {
    if (options.id !== undefined) await this.checkNewId(options.id);
    const [embeddings] = await this.embedRegions(image, [region], options.decoded);
    if (options.signal?.aborted) throw new RegionVqaError("aborted", "the request was cancelled");
    return this.conversations.start(embeddings, {
      ...options,
      afterTurn: this.transcriptWriter(embeddings.key, options.systemPrompt),
    });
  }

  /** A client-chosen id must be well formed and not taken, here or (with shared state) elsewhere. */
  private async checkNewId(id: string): Promise<void> {
    if (typeof id !== "string" || !CONVERSATION_ID_PATTERN.test(id)) {
      throw new RegionVqaError(
        "invalid_request",
        "A conversation id is 8 to 128 characters of letters, digits, '_', '-', '.' and ':'.",
      );
    }
    if (this.conversations.get(id) || (await this.options.sharedState?.getTranscript(id))) {
      throw new RegionVqaError(
        "conversation_exists",
        `A conversation "${id}" exists; continue it without an image, or choose another id.`,
      );
    }
  }

  /** With shared state: after each answer, the whole transcript goes to Redis (before the client hears the answer). */
  private transcriptWriter(
    featureKey: string | undefined,
    systemPrompt: string | undefined,
  ): ((conversation: Conversation) => Promise<void>) | undefined {
    const shared = this.options.sharedState;
    if (!shared || !featureKey) return undefined;
    return (conversation) =>
      shared.putTranscript({
        version: 1,
        id: conversation.id,
        models: this.conversationModels,
        featureKey,
        ...(systemPrompt !== undefined ? { systemPrompt } : {}),
        turns: conversation.turns.map((t) => ({ question: t.question, answer: t.answer })),
        updatedAt: new Date().toISOString(),
      });
  }

  getConversation(id: string): Conversation | undefined {
    return this.conversations.get(id);
  }

  async resumeConversation(
    id: string,
    options: { signal?: AbortSignal } = {},
  ): Promise<ResumedConversation | undefined> {
    this.assertOpen();
    const shared = this.options.sharedState;
    const local = this.conversations.get(id);
    if (local && !shared) return { conversation: local, rebuilt: false };
    if (local && shared) {
      // Another replica may have continued this conversation since (a client that does not send
      // X-Conversation-Id is balanced like a new request): a local copy behind its transcript is
      // dropped and rebuilt. A local copy ahead of it (its last write failed) or a transcript that
      // cannot be read leaves the local copy in charge.
      const transcript = await shared.getTranscript(id);
      if (!transcript || isPrefix(transcript.turns, local.turns))
        return { conversation: local, rebuilt: false };
      this.options.logger.info(
        `conversation ${id} was continued elsewhere; rebuilding it from its transcript`,
      );
      await local.dispose();
      return this.rebuildOnce(id, options.signal, transcript);
    }
    if (!shared) return undefined;
    return this.rebuildOnce(id, options.signal);
  }

  /** Concurrent follow-ups for one conversation share one rebuild. */
  private async rebuildOnce(
    id: string,
    signal: AbortSignal | undefined,
    transcript?: Transcript,
  ): Promise<ResumedConversation | undefined> {
    let pending = this.rebuilding.get(id);
    if (!pending) {
      pending = this.rebuild(id, signal, transcript).finally(() => this.rebuilding.delete(id));
      this.rebuilding.set(id, pending);
    }
    const conversation = await pending;
    return conversation && { conversation, rebuilt: true };
  }

  /**
   * A conversation this process does not hold (another replica's, or one evicted here): its transcript
   * and its region's shared embeddings -> the same prompt, image rows and turns evaluated again.
   */
  private async rebuild(
    id: string,
    signal: AbortSignal | undefined,
    known?: Transcript,
  ): Promise<Conversation | undefined> {
    const shared = this.options.sharedState!;
    const t0 = performance.now();
    const transcript = known ?? (await shared.getTranscript(id));
    if (!transcript) return undefined;
    if (transcript.models !== this.conversationModels) {
      throw new RegionVqaError(
        "conversation_not_found",
        `Conversation "${id}" was held by a server with other models; start again with an image.`,
      );
    }
    const embeddings = await this.embedder.lookup(transcript.featureKey);
    if (!embeddings) {
      throw new RegionVqaError(
        "conversation_not_found",
        `Conversation "${id}" can no longer be continued: its region's embeddings expired from the shared cache. Start again with the image.`,
      );
    }
    if (signal?.aborted) throw new RegionVqaError("aborted", "the request was cancelled");
    const conversation = await this.conversations.start(embeddings, {
      id,
      history: transcript.turns,
      systemPrompt: transcript.systemPrompt,
      signal,
      afterTurn: this.transcriptWriter(transcript.featureKey, transcript.systemPrompt),
    });
    this.options.logger.info(
      `rebuilt conversation ${id} (${transcript.turns.length} turns) from the shared state`,
    );
    this.options.onStage("rebuild", performance.now() - t0);
    return conversation;
  }

  async closeConversation(id: string): Promise<boolean> {
    const local = this.conversations.get(id);
    await local?.dispose();
    const deleted = (await this.options.sharedState?.deleteTranscript(id)) ?? false;
    return local !== undefined || deleted;
  }

  async captionRegions(
    image: Uint8Array,
    regions: Region[],
    options: GenerationOptions & { detail?: "short" | "long"; decoded?: RgbImage } = {},
  ): Promise<AnswerResult[]> {
    const embeddings = await this.embedRegions(image, regions, options.decoded);
    const { detail, decoded: _decoded, ...generation } = options;
    const question = detail === "long" ? this.options.captionPrompts.long : this.options.captionPrompts.short;
    // One failed region stops the others at once, so no slot keeps generating for a failed request.
    const stopAll = new AbortController();
    const signal = generation.signal ? AbortSignal.any([generation.signal, stopAll.signal]) : stopAll.signal;
    return Promise.all(
      embeddings.map(async (block) => {
        try {
          const conversation = await this.conversations.start(block, {
            register: false,
            waitForSlot: true,
            signal,
          });
          try {
            return await conversation.ask(question, { ...generation, signal }).result;
          } finally {
            await conversation.dispose();
          }
        } catch (err) {
          stopAll.abort();
          throw err;
        }
      }),
    );
  }

  /** Live conversations and vision-cache counters, for metrics and benchmarks. */
  stats(): PipelineStats {
    return {
      conversations: this.conversations.size,
      cache: this.embedder.cacheStats(),
      encoder: this.embedder.batchStats(),
      ...(this.segmenter ? { segmenterCache: this.segmenter.cacheStats() } : {}),
      ...(this.classifier ? { textCache: this.classifier.cacheStats() } : {}),
    };
  }

  /** Drops every cached region embedding (e.g. for cold benchmarks). */
  clearVisionCache(): void {
    this.embedder.clearCache();
    this.segmenter?.clearCache();
  }

  /** Drops every cached text feature of the classifier (e.g. for cold classification benchmarks). */
  clearTextCache(): void {
    this.classifier?.clearCache();
  }

  private assertOpen(): void {
    if (this.disposed) throw new RegionVqaError("aborted", "the pipeline is shut down");
  }

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    await this.conversations.dispose();
    await this.llm.dispose();
    await this.segmenter?.dispose();
    await this.classifier?.dispose();
    await this.embedder.dispose();
  }
}

/** Whether the turns `a` are the first turns of `b` (all of them, when as many). */
function isPrefix(a: readonly Turn[], b: readonly Turn[]): boolean {
  return a.length <= b.length && a.every((t, i) => t.question === b[i].question && t.answer === b[i].answer);
}

export function createPipeline(options: PipelineOptions): Promise<LocalRegionVqaPipeline> {
  return LocalRegionVqaPipeline.create(options);
}
