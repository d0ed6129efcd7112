/**
 * `RegionClassifier`: Alpha-CLIP's own task. Labels become CLIP text features (tokenizer + text
 * tower, each text encoded once and kept in an LRU keyed by model and text), regions are represented by
 * their `image_embed`, and both are compared the way Alpha-CLIP's zero-shot recipe does
 * (docs/reference.md section 6.2): L2-normalised features, several templates averaged then normalised
 * again, score = 100 x cosine, probabilities = softmax over the labels.
 */
import { RegionVqaError } from "../common/errors.js";
import { ByteLruCache, type ByteLruStats } from "../common/lru-cache.js";
import type { OrtDevice } from "../common/ort/index.js";
import { ALPHA_CLIP_ZERO_SHOT_SCALE, ClipTextEncoder, ClipTokenizer } from "../text/index.js";

/** Most labels in one request, and the default template (Alpha-CLIP's). */
export const MAX_LABELS = 1000;
export const DEFAULT_TEMPLATE = "a photo of a {}.";
const MAX_TEMPLATES = 16;

export interface LabelScore {
  label: string;
  /** 100 x cosine similarity (Alpha-CLIP's logit). */
  score: number;
  probability: number;
}

export interface ClassifyResult {
  /** Per region, every label ranked, best first. */
  regions: Array<{ index: number; labels: LabelScore[] }>;
  /** Per label, the regions ranked by score, best first (which region is "the red cup"?). */
  labels: Array<{ label: string; regions: Array<{ index: number; score: number; probability: number }> }>;
  textCached: number;
  textEncoded: number;
}

export interface RegionClassifierOptions {
  device?: OrtDevice;
  threads?: number;
  /** Bytes of text features kept. Default 16 MiB (about 5000 ViT-L texts). */
  cacheBytes?: number;
}

/** `v` scaled to unit length (a copy). */
export function l2Normalize(v: Float32Array): Float32Array {
  let n = 0;
  for (const x of v) n += x * x;
  const inv = 1 / Math.max(Math.sqrt(n), 1e-12);
  return v.map((x) => x * inv);
}

/** Checks labels and templates: none empty, at most MAX_LABELS, templates hold "{}". */
export function checkLabels(labels: unknown, templates: unknown): { labels: string[]; templates: string[] } {
  if (!Array.isArray(labels) || labels.length === 0)
    throw new RegionVqaError("labels_invalid", "Give at least one label.");
  if (labels.length > MAX_LABELS) {
    throw new RegionVqaError("too_many_labels", `${labels.length} labels; the limit is ${MAX_LABELS}.`, {
      labels: labels.length,
      maxLabels: MAX_LABELS,
    });
  }
  labels.forEach((l, i) => {
    if (typeof l !== "string" || l.trim() === "")
      throw new RegionVqaError("labels_invalid", `Label ${i} is empty; every label needs some text.`);
  });
  const list =
    templates === undefined ? [DEFAULT_TEMPLATE] : Array.isArray(templates) ? templates : [templates];
  if (list.length === 0 || list.length > MAX_TEMPLATES)
    throw new RegionVqaError("labels_invalid", `Give 1 to ${MAX_TEMPLATES} templates.`);
  list.forEach((t, i) => {
    if (typeof t !== "string" || !t.includes("{}"))
      throw new RegionVqaError(
        "labels_invalid",
        `Template ${i} must be text holding "{}" where the label goes.`,
      );
  });
  return { labels: labels.map((l: string) => l.trim()), templates: list as string[] };
}

export class RegionClassifier {
  private readonly cache: ByteLruCache<Float32Array>;

  private constructor(
    readonly modelDir: string,
    private readonly tokenizer: ClipTokenizer,
    private readonly encoder: ClipTextEncoder,
    cacheBytes: number,
  ) {
    this.cache = new ByteLruCache(cacheBytes, (v) => v.byteLength);
  }

  static async load(modelDir: string, options: RegionClassifierOptions = {}): Promise<RegionClassifier> {
    const [tokenizer, encoder] = await Promise.all([
      ClipTokenizer.load(),
      ClipTextEncoder.load(modelDir, { device: options.device, threads: options.threads }),
    ]);
    return new RegionClassifier(modelDir, tokenizer, encoder, options.cacheBytes ?? 16 * 1024 * 1024);
  }

  /** Width of the text features; must equal the vision model's `image_embed` width. */
  get embedDim(): number {
    return this.encoder.embedDim;
  }

  get device(): string {
    return this.encoder.device;
  }

  /**
   * Refuses (never truncates) a label that does not fit CLIP's 77-token context with one of the
   * templates, naming the label: the check runs before any model does.
   */
  checkLabelLengths(labels: string[], templates: string[]): void {
    labels.forEach((label, index) => {
      for (const template of templates) {
        const text = template.replaceAll("{}", label);
        // A text with cached features passed this check before it was encoded: skip the tokenizer.
        if (this.cache.has(this.cacheKey(text))) continue;
        const tokens = this.tokenizer.encode(text).length + 2;
        if (tokens > 77) {
          throw new RegionVqaError(
            "label_too_long",
            `Label ${index} is ${tokens} tokens with the template "${template}" (start and end included); CLIP reads at most 77. Shorten it; it is not truncated.`,
            { index, tokens, maxTokens: 77 },
          );
        }
      }
    });
  }

  /** The text cache's key: the model folder and the text. */
  private cacheKey(text: string): string {
    return `${this.modelDir}\n${text}`;
  }

  /** Unnormalised text features of each text (cached by model + text). */
  async textFeatures(
    texts: string[],
  ): Promise<{ features: Float32Array[]; cached: number; encoded: number }> {
    const features: Array<Float32Array | undefined> = texts.map((t) => this.cache.get(this.cacheKey(t)));
    const missing = [...new Set(texts.filter((_, i) => !features[i]))];
    if (missing.length > 0) {
      const ids = this.tokenizer.tokenize(missing);
      const out = await this.encoder.encode(ids);
      const d = out.shape[1];
      missing.forEach((text, j) => this.cache.set(this.cacheKey(text), out.data.slice(j * d, (j + 1) * d)));
    }
    const cachedCount = features.filter(Boolean).length;
    return {
      features: texts.map((t, i) => features[i] ?? this.cache.get(this.cacheKey(t))!),
      cached: cachedCount,
      encoded: missing.length,
    };
  }

  /** One normalised feature per label: each template's feature normalised, averaged, normalised again. */
  async labelFeatures(
    labels: string[],
    templates: string[],
  ): Promise<{ features: Float32Array[]; cached: number; encoded: number }> {
    const texts = labels.flatMap((l) => templates.map((t) => t.replaceAll("{}", l)));
    const { features, cached, encoded } = await this.textFeatures(texts);
    const d = this.embedDim;
    const out = labels.map((_, i) => {
      const sum = new Float32Array(d);
      for (let k = 0; k < templates.length; k++) {
        const f = l2Normalize(features[i * templates.length + k]);
        for (let j = 0; j < d; j++) sum[j] += f[j];
      }
      return l2Normalize(sum);
    });
    return { features: out, cached, encoded };
  }

  /** Regions' image embeddings (unnormalised) x labels -> rankings both ways. */
  async classify(
    regionEmbeds: Float32Array[],
    labelsIn: unknown,
    templatesIn?: unknown,
  ): Promise<ClassifyResult> {
    const { labels, templates } = checkLabels(labelsIn, templatesIn);
    for (const e of regionEmbeds) {
      if (e.length !== this.embedDim) {
        throw new RegionVqaError(
          "embedding_mismatch",
          `The vision model's region embeddings are ${e.length} wide but the text model's are ${this.embedDim}: they are not a CLIP pair.`,
        );
      }
    }
    const { features, cached, encoded } = await this.labelFeatures(labels, templates);
    const scores = regionEmbeds.map((e) => {
      const r = l2Normalize(e);
      return features.map((t) => {
        let dot = 0;
        for (let j = 0; j < r.length; j++) dot += r[j] * t[j];
        return ALPHA_CLIP_ZERO_SHOT_SCALE * dot;
      });
    });
    const softmax = (row: number[]) => {
      const m = Math.max(...row);
      const e = row.map((v) => Math.exp(v - m));
      const s = e.reduce((a, b) => a + b, 0);
      return e.map((v) => v / s);
    };
    const probs = scores.map(softmax);
    return {
      regions: scores.map((row, index) => ({
        index,
        labels: row
          .map((score, k) => ({ label: labels[k], score, probability: probs[index][k] }))
          .sort((a, b) => b.score - a.score),
      })),
      labels: labels.map((label, k) => {
        const column = scores.map((row) => row[k]);
        const p = softmax(column);
        return {
          label,
          regions: column
            .map((score, index) => ({ index, score, probability: p[index] }))
            .sort((a, b) => b.score - a.score),
        };
      }),
      textCached: cached,
      textEncoded: encoded,
    };
  }

  cacheStats(): ByteLruStats {
    return this.cache.stats();
  }

  /** Drops every cached text feature (hit and miss counters stay), e.g. for cold benchmarks. */
  clearCache(): void {
    this.cache.clear();
  }

  dispose(): Promise<void> {
    return this.encoder.dispose();
  }
}
