/**
 * `SamSegmenter`: a SAM-style segmenter folder (manifest kind "sam-segmenter": an image encoder and a
 * prompt decoder as two ONNX graphs) run in ONNX Runtime. The encoder runs once per image and its
 * embeddings are kept in a byte-bounded LRU keyed by the image's content, so every further click on
 * the same image only runs the small decoder ("encode once, click many").
 *
 * SAM 2.1 exports (encoder outputs `image_embeddings.0/1/2`, decoder input `input_boxes`) and SAM 1
 * exports (`image_embeddings` + `image_positional_embeddings`, no box input) take the same path: the
 * decoder is fed every encoder output it names as an input, plus the prompt tensors.
 */
import path from "node:path";
import { RegionVqaError, isRegionVqaError } from "../common/errors.js";
import { sha256Hex } from "../common/imaging/kernels.js";
import { ImagingPool } from "../common/imaging/pool.js";
import { ByteLruCache, type ByteLruStats } from "../common/lru-cache.js";
import { readModelManifest, type ModelManifest } from "../common/manifest.js";
import {
  OnnxSession,
  type OnnxSessionLogger,
  type OrtDevice,
  type OrtProvider,
  type WireTensor,
} from "../common/ort/index.js";
import type { RgbImage } from "../vision/types.js";
import { checkPrompt, encodePrompt } from "./preprocess.js";
import { SamProcessor } from "./processor.js";
import { modelFingerprint } from "../common/fingerprint.js";
import { roundBundleForSharing } from "../shared-state/feature-codec.js";
import type {
  ImageEmbeddings,
  SamFrame,
  SharedSegmenterCache,
  SegmentCandidate,
  SegmentPrompt,
  SegmentOptions,
  SegmentResult,
  SegmenterConfig,
} from "./types.js";

export const SEGMENTER_KIND = "sam-segmenter";
/** What to tell a user who clicked when no segmenter is loaded. */
export const NO_SEGMENTER_MESSAGE =
  "No segmenter is loaded, so points cannot become a region: run `region-vqa pull sam2.1-tiny` and start with --segmenter <folder> (the bundled shapes model has one).";
/** Default bound of the image-embedding cache: SAM 2.1-tiny's embeddings take about 16 MB per image. */
export const DEFAULT_SEGMENTER_CACHE_BYTES = 256 * 1024 * 1024;

export interface SegmenterLoadOptions {
  device?: OrtDevice;
  threads?: number;
  logger?: OnnxSessionLogger;
  /** Bytes of image embeddings kept. Default 256 MiB. */
  cacheBytes?: number;
  /** Other replicas' image embeddings (Redis): looked up after a local miss, written after an encode. */
  shared?: SharedSegmenterCache;
  /** Each lookup in `shared` (metrics hook). */
  onSharedLookup?: (hit: boolean) => void;
  /** Where preprocessing, hashing and mask upsampling run. Default: the process's shared pool. */
  imaging?: ImagingPool;
}

/** Reads and checks a segmenter folder's manifest. */
export async function readSegmenterManifest(dir: string): Promise<ModelManifest<SegmenterConfig>> {
  const manifest = await readModelManifest<SegmenterConfig>(dir, {
    kinds: [SEGMENTER_KIND],
    folder: "Segmenter folder",
    model: "a segmenter",
    positiveIntegers: ["imageSize", "maskSize"],
  });
  const c = manifest.config;
  const bad = (what: string) => new RegionVqaError("model_invalid", `${dir}/manifest.json: config.${what}`);
  if (!c || (c.family !== "sam2" && c.family !== "sam1")) throw bad('family must be "sam2" or "sam1"');
  if (c.resize !== "stretch" && c.resize !== "longest-side")
    throw bad('resize must be "stretch" or "longest-side"');
  for (const key of ["mean", "std"] as const) {
    if (!Array.isArray(c[key]) || c[key].length !== 3 || !c[key].every((v) => Number.isFinite(v)))
      throw bad(`${key} must be three numbers`);
  }
  for (const key of ["encoder", "decoder"] as const) {
    if (typeof c[key] !== "string" || !c[key]) throw bad(`${key} must name the ${key} graph's file`);
  }
  return manifest;
}

/** Content key of a decoded image: its size and pixels (hashed off the event loop). */
export function imageKey(image: RgbImage, pool: ImagingPool = ImagingPool.shared()): Promise<string> {
  return sha256Hex(pool, new Uint8Array(new Uint32Array([image.width, image.height]).buffer), image.data);
}

/** One image's embeddings, as this side knows them: they live in the decoder's worker under `resident`. */
interface CachedImage {
  frame: SamFrame;
  bytes: number;
  /** The decoder session's key for the embeddings (unique per entry, so a re-encode never meets an old drop). */
  resident: string;
  /** Read from the shared tier (no encoder run here). */
  fromShared?: boolean;
}

function promptFeeds(tensors: ReturnType<typeof encodePrompt>): Record<string, WireTensor> {
  return {
    input_points: tensors.input_points,
    input_labels: tensors.input_labels,
    ...(tensors.input_boxes ? { input_boxes: tensors.input_boxes } : {}),
  };
}

export class SamSegmenter {
  private readonly cache: ByteLruCache<CachedImage>;
  /** Encodes of the same image already in flight: a burst of clicks shares one encoder run. */
  private readonly pending = new Map<string, Promise<CachedImage>>();
  private readonly boxInput: boolean;
  private readonly embeddingNames: string[];
  /** Shared writes not yet acknowledged (awaited on dispose). */
  private readonly pendingShares = new Set<Promise<void>>();
  private readonly processor: SamProcessor;
  private residentCount = 0;

  private constructor(
    readonly modelDir: string,
    readonly manifest: ModelManifest<SegmenterConfig>,
    private readonly encoder: OnnxSession,
    private readonly decoder: OnnxSession,
    cacheBytes: number,
    /** With `shared`: the model's content fingerprint, which prefixes shared keys. */
    private readonly shared?: {
      cache: SharedSegmenterCache;
      modelKey: string;
      onLookup?: (hit: boolean) => void;
    },
    private readonly pool: ImagingPool = ImagingPool.shared(),
  ) {
    // An entry that leaves the cache frees its embeddings in the decoder's worker, after the clicks
    // already on their way (a click that obtained the entry posts its run within the same turn).
    this.cache = new ByteLruCache(
      cacheBytes,
      (v) => v.bytes,
      (_key, v) => void setImmediate(() => this.decoder.drop(v.resident)),
    );
    this.processor = new SamProcessor(manifest.config, pool);
    this.boxInput = decoder.inputNames.includes("input_boxes");
    this.embeddingNames = encoder.outputNames.filter((n) => decoder.inputNames.includes(n));
  }

  static async load(dir: string, options: SegmenterLoadOptions = {}): Promise<SamSegmenter> {
    const manifest = await readSegmenterManifest(dir);
    const open = (file: string, label: string) =>
      OnnxSession.open(path.resolve(dir, file), {
        label,
        device: options.device,
        threads: options.threads,
        logger: options.logger,
      });
    const encoder = await open(manifest.config.encoder, "segmenter encoder");
    let decoder: OnnxSession | undefined;
    try {
      // The decoder is small and runs per click; it goes where the encoder went.
      decoder = await OnnxSession.open(path.resolve(dir, manifest.config.decoder), {
        label: "segmenter decoder",
        device: encoder.provider,
        threads: options.threads,
        logger: options.logger,
      });
      const needed = ["input_points", "input_labels"].filter((n) => !decoder!.inputNames.includes(n));
      const fromEncoder = encoder.outputNames.filter((n) => decoder!.inputNames.includes(n));
      if (needed.length > 0 || fromEncoder.length === 0 || !decoder.outputNames.includes("pred_masks")) {
        throw new RegionVqaError(
          "model_invalid",
          `${dir}: the decoder's inputs (${decoder.inputNames.join(", ")}) and outputs (${decoder.outputNames.join(", ")}) are not a SAM prompt decoder's (input_points, input_labels, the encoder's outputs -> iou_scores, pred_masks).`,
        );
      }
      const shared = options.shared
        ? { cache: options.shared, modelKey: await modelFingerprint(dir), onLookup: options.onSharedLookup }
        : undefined;
      return new SamSegmenter(
        dir,
        manifest,
        encoder,
        decoder,
        options.cacheBytes ?? DEFAULT_SEGMENTER_CACHE_BYTES,
        shared,
        options.imaging,
      );
    } catch (err) {
      await decoder?.dispose().catch(() => undefined);
      await encoder.dispose().catch(() => undefined);
      throw err;
    }
  }

  get config(): SegmenterConfig {
    return this.manifest.config;
  }
  get provider(): OrtProvider {
    return this.encoder.provider;
  }
  /** Where it runs: "cpu", "cuda", or e.g. "webgpu (NVIDIA RTX 4090)". */
  get device(): string {
    return this.encoder.device;
  }
  /** Whether the decoder takes a box (SAM 2 exports do, SAM 1 exports do not). */
  get acceptsBoxes(): boolean {
    return this.boxInput;
  }

  private async encode(
    image: RgbImage,
    key: string,
  ): Promise<{ cached: CachedImage; hit: boolean; ms: number }> {
    const hit = this.cache.get(key);
    if (hit) return { cached: hit, hit: true, ms: 0 };
    const t0 = performance.now();
    let job = this.pending.get(key);
    if (!job) {
      job = (async () => {
        const fromShared = await this.lookupShared(image, key);
        if (fromShared) return fromShared;
        const { pixelValues, frame } = await this.processor.image(image);
        const outputs = await this.encoder.run({
          [this.encoder.inputNames[0]]: { data: pixelValues.data, dims: pixelValues.shape },
        });
        let embeddings: ImageEmbeddings = {};
        for (const name of this.embeddingNames) {
          const t = outputs[name];
          embeddings[name] = { data: t.data as Float32Array, shape: t.dims };
        }
        if (this.shared) embeddings = this.share(key, frame, embeddings);
        const entry = this.keepResident(frame, embeddings);
        this.cache.set(key, entry);
        return entry;
      })().finally(() => this.pending.delete(key));
      this.pending.set(key, job);
    }
    const cached = await job;
    return { cached, hit: cached.fromShared === true, ms: performance.now() - t0 };
  }

  /** The shared tier (another replica's encode of the same image), checked against this model's outputs. */
  private async lookupShared(image: RgbImage, key: string): Promise<CachedImage | undefined> {
    if (!this.shared) return undefined;
    const found = await this.shared.cache.getSegmenterEmbeddings(`${this.shared.modelKey}:${key}`);
    const usable =
      found &&
      found.frame.width === image.width &&
      found.frame.height === image.height &&
      this.embeddingNames.every((n) => found.embeddings[n] !== undefined);
    this.shared.onLookup?.(Boolean(usable));
    if (!usable) return undefined;
    const embeddings: ImageEmbeddings = {};
    for (const name of this.embeddingNames) embeddings[name] = found.embeddings[name];
    const entry: CachedImage = { ...this.keepResident(found.frame, embeddings), fromShared: true };
    this.cache.set(key, entry);
    return entry;
  }

  /** Moves an image's embeddings to the decoder's worker; what stays here is their key and size. */
  private keepResident(frame: SamFrame, embeddings: ImageEmbeddings): CachedImage {
    const resident = `image-${++this.residentCount}`;
    let bytes = 0;
    const tensors: Record<string, WireTensor> = {};
    for (const [name, t] of Object.entries(embeddings)) {
      tensors[name] = { data: t.data, dims: t.shape };
      bytes += t.data.byteLength;
    }
    this.decoder.keep(resident, tensors);
    return { frame, bytes, resident };
  }

  /**
   * Writes a new entry to the shared tier in the background, and returns the embeddings rounded as
   * stored there, so this replica decodes exactly what the others will. The entry is serialised
   * before this returns (the embeddings then move to the decoder's worker).
   */
  private share(key: string, frame: SamFrame, embeddings: ImageEmbeddings): ImageEmbeddings {
    const shared = this.shared!;
    const names = Object.keys(embeddings);
    const rounded = roundBundleForSharing(
      { tensors: names.map((name) => ({ name, ...embeddings[name] })) },
      shared.cache.featureDtype,
    );
    const out: ImageEmbeddings = {};
    for (const t of rounded.tensors) out[t.name] = { data: t.data, shape: t.shape };
    const write = shared.cache
      .putSegmenterEmbeddings(`${shared.modelKey}:${key}`, { frame, embeddings: out })
      .catch(() => undefined)
      .finally(() => this.pendingShares.delete(write));
    this.pendingShares.add(write);
    return out;
  }

  /**
   * Encodes the image now (or finds it cached), so that later clicks only decode. `key` is the
   * image's content key; by default a hash of its pixels.
   */
  async prepare(image: RgbImage, key?: string): Promise<{ cached: boolean; ms: number }> {
    const { hit, ms } = await this.encode(image, key ?? (await imageKey(image, this.pool)));
    return { cached: hit, ms };
  }

  /**
   * Clicks and/or a box on an image -> its mask (the candidate with the highest predicted IoU) and
   * every candidate's score (and mask, with `allCandidates`). Throws `point_invalid`,
   * `point_outside_image`, `too_many_points`, `box_invalid` for bad prompts and `segment_empty` when
   * the chosen mask covers no pixel.
   */
  async segment(
    image: RgbImage,
    prompt: SegmentPrompt,
    options: SegmentOptions = {},
  ): Promise<SegmentResult> {
    checkPrompt(prompt, image.width, image.height);
    const key = options.imageKey ?? (await imageKey(image, this.pool));
    let { cached, hit, ms: encodeMs } = await this.encode(image, key);
    // Prompt tensors are moved to the worker by a run, so each run gets its own.
    const decode = (entry: CachedImage) =>
      this.decoder.run(promptFeeds(encodePrompt(prompt, entry.frame, this.boxInput)), {
        resident: entry.resident,
      });
    const t0 = performance.now();
    let out: Record<string, WireTensor>;
    try {
      out = await decode(cached);
    } catch (err) {
      // The entry left the cache between its lookup and this run (a race with eviction): encode again.
      if (!isRegionVqaError(err) || !err.details?.residentMissing) throw err;
      ({ cached, hit, ms: encodeMs } = await this.encode(image, key));
      out = await decode(cached);
    }
    const decodeMs = performance.now() - t0;

    const t1 = performance.now();
    const M = this.config.maskSize;
    const dims = out.pred_masks.dims;
    if (dims.length !== 5 || dims[3] !== M || dims[4] !== M) {
      throw new RegionVqaError(
        "model_mismatch",
        `The decoder returned pred_masks [${dims.join(", ")}]; the manifest says [1, 1, K, ${M}, ${M}].`,
      );
    }
    const count = dims[2];
    const logits = out.pred_masks.data as Float32Array;
    const scores = out.iou_scores
      ? Array.from((out.iou_scores.data as Float32Array).subarray(0, count))
      : new Array<number>(count).fill(0);
    let index = 0;
    for (let k = 1; k < count; k++) if (scores[k] > scores[index]) index = k;
    const frame = cached.frame;
    const candidates: SegmentCandidate[] = await Promise.all(
      scores.map(async (score, k) => {
        if (k !== index && !options.allCandidates) return { score };
        const { mask, area } = await this.processor.mask(logits.subarray(k * M * M, (k + 1) * M * M), frame);
        return { score, mask, area };
      }),
    );
    const objectScore = out.object_score_logits
      ? (out.object_score_logits.data as Float32Array)[0]
      : undefined;
    const postprocessMs = performance.now() - t1;
    const best = candidates[index];
    if (!best.mask || !best.area) {
      throw new RegionVqaError(
        "segment_empty",
        "The segmenter found no object at the given points (the mask is empty); click inside an object.",
        { score: best.score, objectScore },
      );
    }
    return {
      mask: best.mask,
      score: best.score,
      area: best.area,
      index,
      candidates,
      objectScore,
      timings: { encodeMs, decodeMs, postprocessMs, embeddingsCached: hit },
    };
  }

  /** What crossed to the decoder: embeddings once per image (`keptBytes`), then only prompts per click. */
  decoderTransfers(): { runs: number; inputBytes: number; keptBytes: number } {
    return this.decoder.transfers();
  }

  cacheStats(): ByteLruStats {
    return this.cache.stats();
  }
  clearCache(): void {
    this.cache.clear();
  }

  async dispose(): Promise<void> {
    await Promise.all(this.pendingShares);
    await this.decoder.dispose();
    await this.encoder.dispose();
  }
}
