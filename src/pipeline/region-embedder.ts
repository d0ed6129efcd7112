/**
 * `RegionEmbedder`: image bytes + regions -> one block of LLM-ready image embeddings per region
 * (decode, region mask, LLaVA preprocessing, Alpha-CLIP, projector). Blocks are cached by content
 * (model, image bytes, mask) in a byte-bounded LRU, so a repeated image + region never re-runs the
 * encoder; the regions of one image that miss the cache are encoded together in one batch.
 */
import { createHash } from "node:crypto";
import { RegionVqaError } from "../common/errors.js";
import { sha256Hex } from "../common/imaging/kernels.js";
import { checkRegionCount } from "../common/limits.js";
import type { OrtProvider } from "../common/ort/index.js";
import { ownsWholeBuffer, type Tensor } from "../common/tensor.js";
import { checkProjectorWidths, LlavaProjector } from "../projector/index.js";
import {
  AlphaClipEncoder,
  decodeImage,
  LlavaImageProcessor,
  llavaAlphaFromMask,
  regionToMaskAsync,
  type DecodedImage,
  type Region,
  type RgbImage,
} from "../vision/index.js";
import { ByteLruCache, type ByteLruStats } from "../common/lru-cache.js";
import { modelFingerprint } from "../common/fingerprint.js";
import { roundForSharing, type SharedFeatureDtype, type StoredEmbeddings } from "../shared-state/index.js";
import {
  EncodeBatcher,
  type BatchInput,
  type BatchOutputs,
  type EncodeBatcherStats,
} from "./encode-batcher.js";
import type { PipelineStage, ResolvedPipelineOptions } from "./options.js";
import type { RegionEncoder } from "./ports.js";

/** Projected image embeddings of one region, ready for the LLM: `count` rows of n_embd, row-major. */
export interface RegionEmbeddings {
  data: Float32Array;
  count: number;
  /**
   * The region's CLIP embedding (Alpha-CLIP's `image_embed`, unnormalised), when the vision model
   * outputs it: what zero-shot classification and region embeddings compare with text.
   */
  imageEmbed?: Float32Array;
  /** Content key in the vision cache (local and shared): model identity, image hash, mask hash. */
  key?: string;
}

/** The part of the shared state (src/shared-state) the embedder uses: a second, cross-replica cache tier. */
export interface SharedFeatureCache {
  readonly featureDtype: SharedFeatureDtype;
  getFeatures(keys: string[]): Promise<Array<StoredEmbeddings | undefined>>;
  putFeatures(key: string, value: StoredEmbeddings): Promise<void>;
}

type EmbedderOptions = Pick<
  ResolvedPipelineOptions,
  | "vision"
  | "projector"
  | "device"
  | "visionThreads"
  | "visionCacheBytes"
  | "decodeLimits"
  | "maxRegions"
  | "logger"
  | "onStage"
  | "onCache"
  | "imaging"
  | "encoderBatch"
>;

/** Encoder batches across requests by default on GPUs only (on the CPU a batch costs its size). */
export const DEFAULT_GPU_ENCODER_BATCH = 16;

function sha256(...parts: Uint8Array[]): string {
  const h = createHash("sha256");
  for (const p of parts) h.update(p);
  return h.digest("hex");
}

/** Splits [N, T, W] into N row-major [T, W] blocks (views, no copy). */
function splitBatch(t: Tensor): RegionEmbeddings[] {
  const [n, tokens, width] = t.shape;
  return Array.from({ length: n }, (_, i) => ({
    data: t.data.subarray(i * tokens * width, (i + 1) * tokens * width),
    count: tokens,
  }));
}

export class RegionEmbedder {
  private readonly cache: ByteLruCache<RegionEmbeddings>;
  /** Shared writes not yet acknowledged (awaited on dispose). */
  private readonly pendingShares = new Set<Promise<void>>();
  private readonly processor: LlavaImageProcessor;
  private readonly batcher: EncodeBatcher;

  private constructor(
    private readonly options: EmbedderOptions,
    private readonly encoder: RegionEncoder,
    private readonly projector: LlavaProjector | undefined,
    /**
     * Cache keys start with the models' content fingerprint (not their paths), so swapped models never
     * meet stale entries and replicas with the same models at different paths share entries.
     */
    readonly modelKey: string,
    private readonly shared: SharedFeatureCache | undefined,
  ) {
    this.cache = new ByteLruCache(
      options.visionCacheBytes,
      (v) => v.data.byteLength + (v.imageEmbed?.byteLength ?? 0),
    );
    this.processor = new LlavaImageProcessor(encoder.imageSize, options.imaging);
    this.batcher = new EncodeBatcher((input) => this.encodeAndProject(input), {
      maxRegions:
        options.encoderBatch?.maxRegions ?? (encoder.provider === "cpu" ? 1 : DEFAULT_GPU_ENCODER_BATCH),
      maxWaitMs: options.encoderBatch?.maxWaitMs ?? 0,
    });
  }

  static async load(options: EmbedderOptions, shared?: SharedFeatureCache): Promise<RegionEmbedder> {
    const modelKey = sha256(
      new TextEncoder().encode(
        `${await modelFingerprint(options.vision)}|${options.projector ? await modelFingerprint(options.projector) : "fused"}`,
      ),
    );
    const encoder = await AlphaClipEncoder.load(options.vision, {
      device: options.device,
      threads: options.visionThreads,
      logger: options.logger,
    });
    try {
      if (encoder.manifest.kind === "alpha-clip-llava-fused")
        return new RegionEmbedder(options, encoder, undefined, modelKey, shared);
      if (!options.projector) {
        throw new RegionVqaError(
          "model_invalid",
          `the vision folder ${options.vision} has no projector; give a projector file (--projector)`,
        );
      }
      // The projector runs where the encoder's auto/cuda/cpu choice landed.
      const projector = await LlavaProjector.load(options.projector, {
        threads: options.visionThreads,
        device: encoder.provider,
      });
      return new RegionEmbedder(options, encoder, projector, modelKey, shared);
    } catch (err) {
      await encoder.dispose().catch(() => undefined);
      throw err;
    }
  }

  /**
   * Over an encoder made elsewhere (a fused one: it outputs LLM-ready embeddings), e.g. a benchmark's
   * stand-in. `modelKey` prefixes its cache keys.
   */
  static over(options: EmbedderOptions, encoder: RegionEncoder, modelKey: string): RegionEmbedder {
    return new RegionEmbedder(options, encoder, undefined, modelKey, undefined);
  }

  /** Where the encoder (and the projector) run. */
  get provider(): OrtProvider {
    return this.encoder.provider;
  }

  /** Where it runs, for logs and /readyz: "cpu", "cuda", or e.g. "webgpu (NVIDIA RTX 4090)". */
  get device(): string {
    return this.encoder.device;
  }

  /** Throws `model_mismatch` unless the embeddings are as wide as the LLM's token embeddings. */
  assertFits(llmEmbeddingLength: number): void {
    if (this.projector) {
      checkProjectorWidths(this.projector, { encoderWidth: this.encoder.config.width, llmEmbeddingLength });
      return;
    }
    const c = this.encoder.config;
    const outWidth = Number(c.projectorOutWidth ?? c.outWidth ?? NaN);
    if (Number.isFinite(outWidth) && outWidth !== llmEmbeddingLength) {
      throw new RegionVqaError(
        "model_mismatch",
        `the fused vision model outputs ${outWidth}-wide embeddings but the LLM takes ${llmEmbeddingLength}`,
      );
    }
  }

  private timed<T>(stage: PipelineStage, work: () => Promise<T> | T): Promise<T> {
    const t0 = performance.now();
    return Promise.resolve()
      .then(work)
      .finally(() => this.options.onStage(stage, performance.now() - t0));
  }

  /**
   * Image + regions -> one embedding block per region, in order. `decoded` is `image` already decoded
   * by the caller (it must be exactly that decoding): it saves a second decode.
   */
  async embed(image: Uint8Array, regions: Region[], decoded?: RgbImage): Promise<RegionEmbeddings[]> {
    if (regions.length === 0) throw new RegionVqaError("invalid_request", "No region given.");
    checkRegionCount(regions.length, this.options.maxRegions);
    const pool = this.options.imaging;
    const rgb: RgbImage & Pick<DecodedImage, "sha256"> =
      decoded ?? (await this.timed("decode", () => decodeImage(image, this.options.decodeLimits, { pool })));
    const imageHash = rgb.sha256 ?? (await sha256Hex(pool, image));
    // "Whole image" is the reference's no-mask path (null): no mask is made, its key says "whole".
    const masks = await Promise.all(
      regions.map((r) => (r.kind === "whole" ? null : regionToMaskAsync(r, rgb.width, rgb.height, pool))),
    );
    const maskHashes = await Promise.all(masks.map((m) => (m ? sha256Hex(pool, m.data) : "whole")));
    const keys = maskHashes.map((h) => `${this.modelKey}:${imageHash}:${h}`);
    const results = keys.map((k) => {
      const hit = this.cache.get(k);
      this.options.onCache(hit !== undefined, "vision");
      return hit;
    });
    let todo = results.flatMap((r, i) => (r ? [] : [i]));
    if (todo.length > 0 && this.shared) {
      // Second tier: what another replica (or this one, before a restart) already encoded.
      const remote = await this.readShared(todo.map((i) => keys[i]));
      todo.forEach((i, j) => (results[i] = remote[j]));
      todo = todo.filter((i) => !results[i]);
    }
    if (todo.length === 0) return results as RegionEmbeddings[];

    // The image is padded and resized once; each region only adds its alpha plane (the whole image:
    // foreground everywhere, padding included).
    const { pixelValues, alpha } = await this.timed("preprocess", async () => {
      const [image, alpha] = await Promise.all([
        this.processor.image(rgb),
        this.processor.alphas(todo.map((i) => masks[i])),
      ]);
      return { pixelValues: image.pixelValues, alpha };
    });
    const { projected, imageEmbed: embed } = await this.batcher.submit({ pixelValues, alpha });
    const embedWidth = embed ? embed.shape[1] : 0;
    splitBatch(projected!).forEach((block, j) => {
      const i = todo[j];
      // Own copy per region so that evicting or transferring one never touches another; a block that
      // is the whole buffer (one region per run: the usual case) is its own already (576 x 4096
      // floats are 9.4 MB: a copy costs the event loop milliseconds and the GC as much again).
      let own: RegionEmbeddings = {
        data: ownsWholeBuffer(block.data) ? block.data : block.data.slice(),
        count: block.count,
        key: keys[i],
      };
      if (embed) own.imageEmbed = embed.data.slice(j * embedWidth, (j + 1) * embedWidth);
      if (this.shared) {
        // This replica uses exactly the values the others will read back.
        own = { ...roundForSharing(own, this.shared.featureDtype), key: keys[i] };
        this.share(keys[i], own);
      }
      results[i] = own;
      this.cache.set(keys[i], own);
    });
    return results as RegionEmbeddings[];
  }

  /** One encoder run (and projector run) for a batch: the regions of one request or of several. */
  private async encodeAndProject(input: BatchInput): Promise<BatchOutputs> {
    const encoded = await this.timed("encode", () => this.encoder.encode(input));
    if (encoded.projected) return { projected: encoded.projected, imageEmbed: encoded.imageEmbed };
    const { features } = encoded;
    const projector = this.projector;
    if (!features || !projector)
      throw new RegionVqaError("model_invalid", "the vision model returned neither features nor embeddings");
    const projected = await this.timed("project", () => projector.project(features));
    return { projected, imageEmbed: encoded.imageEmbed };
  }

  /** Encoder runs, requests and regions so far (with batching, fewer runs than requests). */
  batchStats(): EncodeBatcherStats {
    return this.batcher.stats();
  }

  /** Writes an entry to the shared tier in the background; a failure is the shared state's to count. */
  private share(key: string, value: RegionEmbeddings): void {
    const shared = this.shared!;
    const write = shared
      .putFeatures(key, value)
      .catch(() => undefined)
      .finally(() => this.pendingShares.delete(write));
    this.pendingShares.add(write);
  }

  /** This replica's cache, then the shared tier: an entry by key, without encoding. */
  async lookup(key: string): Promise<RegionEmbeddings | undefined> {
    const local = this.cache.get(key);
    if (local || !this.shared) return local;
    return (await this.readShared([key]))[0];
  }

  /** Entries of the shared tier by key (each lookup counted); those found join this replica's cache. */
  private async readShared(keys: string[]): Promise<Array<RegionEmbeddings | undefined>> {
    const remote = await this.shared!.getFeatures(keys);
    return keys.map((key, i) => {
      const found = remote[i];
      this.options.onCache(found !== undefined, "shared");
      if (!found) return undefined;
      const value: RegionEmbeddings = { ...found, key };
      this.cache.set(key, value);
      return value;
    });
  }

  /**
   * One encoder (and projector) run on a blank image, so that a GPU compiles its shaders now and not
   * during the first request. Returns how long it took (ms).
   */
  async warmUp(): Promise<number> {
    const t0 = performance.now();
    const size = this.encoder.imageSize;
    const encoded = await this.encoder.encode({
      pixelValues: { data: new Float32Array(3 * size * size), shape: [1, 3, size, size] },
      alpha: llavaAlphaFromMask(null, size).alpha,
    });
    if (!encoded.projected && encoded.features && this.projector)
      await this.projector.project(encoded.features);
    return performance.now() - t0;
  }

  cacheStats(): ByteLruStats {
    return this.cache.stats();
  }

  clearCache(): void {
    this.cache.clear();
  }

  async dispose(): Promise<void> {
    await Promise.all(this.pendingShares);
    await this.projector?.dispose();
    await this.encoder.dispose();
  }
}
