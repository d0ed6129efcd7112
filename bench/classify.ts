/**
 * Zero-shot region classification (`classifyRegions`: Alpha-CLIP region embedding x CLIP text
 * features) on the bundled model (models/shapes: Alpha-CLIP + its CLIP text tower), CPU only:
 *   - text encoding: N label texts encoded in one call (tokenizer + text tower, the text tower cut into
 *     ONNX runs of 64 rows as RegionClassifier does), ms per label, split into tokenizing (a fresh
 *     tokenizer: empty BPE word cache; and again with the word cache warm) and the ONNX runs;
 *   - classify latency per label count, median and p90 over the repeats, in three situations:
 *       cold: a new image and an empty text cache (vision encode + text encode + scoring),
 *       new image: a new image, the labels' text features cached (the baseline of a fixed label set:
 *         vision encode + scoring),
 *       warm: the same image and labels again (vision cache hit, text cache hit: decode, checks, scoring);
 *     and the same with several templates averaged;
 *   - the text cache's bytes for the largest label count, the text tower's size, the peak RSS.
 * Every run counts what it encoded (the classifier's own count, the text cache's misses and the text
 * encoder's ONNX runs), so that a warm run that encodes anything shows in the table.
 *
 * Run it with `npm run bench -- --only classify [--threads 2] [--repeats 10]`.
 */
import { readFile, stat } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { onnx } from "../src/common/onnx/index.js";
import { OnnxSession } from "../src/common/ort/index.js";
import { resolveModelPreset } from "../src/models/index.js";
import { createPipeline, type LocalRegionVqaPipeline, type PipelineStage } from "../src/pipeline/index.js";
import {
  COLOUR_NAMES,
  SHAPES,
  SHAPES_LABELS,
  encodePng,
  generateScene,
  renderScene,
} from "../src/shapes/index.js";
import { ClipTextEncoder, ClipTokenizer, readClipTextManifest } from "../src/text/index.js";
import type { Region } from "../src/vision/index.js";
import { bundledModelDir } from "./model-sets.js";
import { round, rssSampler, spread, type Spread } from "./stats.js";

export interface ClassifyBenchOptions {
  /** ONNX Runtime intra-op threads (vision and text towers). */
  threads: number;
  /** Runs per row (each cold run: a new image and a cleared text cache). */
  repeats: number;
  /** Label counts of the rows; default 1, 24, 1000. */
  labelCounts?: number[];
  /** Templates of the several-templates rows; default 3 (0: no such rows). */
  templates?: number;
  /** Label count of the several-templates rows; default 24 (or the largest count below it). */
  templateLabels?: number;
  /** Preset folder with vision, llm and text; default models/shapes. */
  modelDir?: string;
}

export const DEFAULT_LABEL_COUNTS = [1, 24, 1000];
const DEFAULT_TEMPLATE_COUNT = 3;
/** The first is Alpha-CLIP's (and the classifier's default); the others are extra phrasings. */
export const BENCH_TEMPLATES = [
  "a photo of a {}.",
  "a drawing of a {}.",
  "the {} in the picture.",
  "a picture of the {}.",
];
/** Rows per text-encoder ONNX run (ClipTextEncoder's default maxBatch, what the classifier uses). */
const TEXT_MAX_BATCH = 64;
const TEXT_LABEL = "text encoder";

/**
 * `count` distinct labels: the 24 colour-shape labels of the shapes world first, then made-up ones
 * ("red circle number 24", ...) so that no two texts share a cache entry.
 */
export function benchLabels(count: number): string[] {
  const out = SHAPES_LABELS.slice(0, count);
  for (let i = out.length; i < count; i++) {
    const colour = COLOUR_NAMES[i % COLOUR_NAMES.length];
    const shape = SHAPES[Math.floor(i / COLOUR_NAMES.length) % SHAPES.length];
    out.push(`${colour} ${shape} number ${i}`);
  }
  return out;
}

export interface TextModelInfo {
  dir: string;
  name: string;
  precision: string;
  width: number;
  layers: number;
  vocabSize: number;
  embedDim: number;
  contextLength: number;
  /** Learnt values in the ONNX graph (its float initializers less the causal mask and constants). */
  parameters: number;
  /** Bytes of the folder's files (graph + external weights). */
  bytes: number;
  loadMs: number;
  /** The first encode after loading (ORT plans memory); not in the rows. */
  firstRunAfterLoadMs: number;
}

export interface TextEncodeRow {
  labels: number;
  /** Mean tokens per text, start and end included (the ONNX runs are cut after the longest). */
  meanTokens: number;
  /** ONNX runs per call: ceil(labels / 64). */
  onnxRuns: number;
  /** Per label, median / p90 over the repeats: tokenize (fresh tokenizer) + ONNX. */
  perLabelMs: Spread;
  tokenizePerLabelMs: Spread;
  /** Tokenizing the same texts again with the same tokenizer (its BPE word cache warm). */
  tokenizeWarmPerLabelMs: Spread;
  onnxPerLabelMs: Spread;
  /** The whole call (tokenize + ONNX) for all N labels. */
  callMs: Spread;
}

export type ClassifyScenario = "cold" | "new image" | "warm";

export interface ClassifyRow {
  labels: number;
  templates: number;
  scenario: ClassifyScenario;
  runs: number;
  /** Wall time of `classifyRegions` (image bytes, one mask region, labels -> rankings). */
  totalMs: Spread;
  /** Of it: the vision stages the pipeline reported (decode + preprocess + encode + project). */
  visionMs: Spread;
  /** Of it: the rest (label checks, text features, scoring and ranking). */
  otherMs: Spread;
  /** Summed over the runs: texts the classifier encoded and found cached (its own counts). */
  textEncoded: number;
  textCached: number;
  /** Summed over the runs: text cache misses and the text encoder's ONNX runs. */
  textCacheMisses: number;
  textOnnxRuns: number;
  /** Summed over the runs: runs whose vision encoder ran, and the vision cache's hits and misses. */
  visionEncoderRuns: number;
  visionCacheHits: number;
  visionCacheMisses: number;
}

export interface ClassifyBenchResult {
  options: ClassifyBenchOptions & { labelCounts: number[]; templates: number; templateLabels: number };
  device: "cpu";
  cores: number;
  loadAverage: { start: number[]; end: number[] };
  textModel: TextModelInfo;
  vision: { dir: string; imageSize: number };
  /** Pipeline load (vision, projector, text tower, LLM) and its first classify (not in the rows). */
  pipelineLoadMs: number;
  firstClassifyMs: number;
  templatesUsed: string[];
  /** Example labels beyond the 24 colour-shape ones. */
  syntheticExample: string | null;
  encode: TextEncodeRow[];
  classify: ClassifyRow[];
  /** The text cache after a cold run with the largest label count and one template. */
  textCache: {
    labels: number;
    entries: number;
    /** What the LRU counts: the feature values. */
    bytes: number;
    /** Characters of the keys (model folder + text), which the LRU does not count. */
    keyChars: number;
  } | null;
  peakRssMiB: number;
}

/** Counts the runs of ONNX sessions labelled `label` while installed (wraps OnnxSession#run). */
function sessionRunCounter(label: string): { readonly count: number; restore(): void } {
  const original = OnnxSession.prototype.run;
  let count = 0;
  OnnxSession.prototype.run = function (this: OnnxSession, inputs) {
    if (this.label === label) count++;
    return original.call(this, inputs);
  };
  return {
    get count() {
      return count;
    },
    restore() {
      OnnxSession.prototype.run = original;
    },
  };
}

/**
 * Parameters of an ONNX graph whose weights may be external: the values of its float initializers,
 * less the converter's constants (the causal mask, scalars named const*), which are not learnt.
 */
export async function onnxParameters(file: string): Promise<number> {
  const model = onnx.ModelProto.decode(await readFile(file));
  const FLOAT = 1;
  const FLOAT16 = 10;
  const BFLOAT16 = 16;
  let n = 0;
  for (const t of model.graph?.initializer ?? []) {
    if (t.dataType !== FLOAT && t.dataType !== FLOAT16 && t.dataType !== BFLOAT16) continue;
    if (t.name === "causal_mask" || t.name?.startsWith("const")) continue;
    n += (t.dims ?? []).reduce((a: number, d) => a * Number(d), 1);
  }
  return n;
}

const loadAverage = (): number[] => os.loadavg().map((l) => round(l, 2) ?? 0);
const templated = (labels: string[], templates: string[]): string[] =>
  labels.flatMap((l) => templates.map((t) => t.replaceAll("{}", l)));

/** Text encoding alone: the classifier's miss path (tokenize, then the text tower in runs of 64). */
async function benchTextEncoding(
  textDir: string,
  options: { threads: number; repeats: number; labelCounts: number[] },
  runs: { readonly count: number },
  log: (message: string) => void,
): Promise<{ rows: TextEncodeRow[]; loadMs: number; firstRunAfterLoadMs: number }> {
  const t0 = performance.now();
  const encoder = await ClipTextEncoder.load(textDir, {
    device: "cpu",
    threads: options.threads,
    maxBatch: TEXT_MAX_BATCH,
  });
  const loadMs = performance.now() - t0;
  const rows: TextEncodeRow[] = [];
  try {
    const warm = await ClipTokenizer.load();
    const t1 = performance.now();
    await encoder.encode(warm.tokenize(["a photo of a warm-up."]));
    const firstRunAfterLoadMs = performance.now() - t1;
    for (const n of options.labelCounts) {
      const texts = templated(benchLabels(n), [BENCH_TEMPLATES[0]]);
      const s = { call: [] as number[], tok: [] as number[], tokWarm: [] as number[], onnx: [] as number[] };
      let meanTokens = 0;
      for (let r = 0; r < options.repeats; r++) {
        // A tokenizer of its own (not the shared one): its BPE word cache starts empty. Loading is not timed.
        const tokenizer = await ClipTokenizer.load(undefined, { cacheSize: 50_000 });
        const a = performance.now();
        const ids = tokenizer.tokenize(texts);
        const b = performance.now();
        const before = runs.count;
        await encoder.encode(ids);
        const c = performance.now();
        if (runs.count - before !== Math.ceil(n / TEXT_MAX_BATCH))
          throw new Error(`encoding ${n} texts took ${runs.count - before} ONNX runs`);
        const d = performance.now();
        tokenizer.tokenize(texts);
        s.tokWarm.push(performance.now() - d);
        s.tok.push(b - a);
        s.onnx.push(c - b);
        s.call.push(c - a);
        let tokens = 0;
        const width = ids.shape[1];
        for (let i = 0; i < n; i++) {
          const row = ids.data.subarray(i * width, (i + 1) * width);
          tokens += row.indexOf(tokenizer.eotId) + 1;
        }
        meanTokens = tokens / n;
      }
      const per = (xs: number[]) =>
        spread(
          xs.map((x) => x / n),
          4,
        );
      rows.push({
        labels: n,
        meanTokens: round(meanTokens, 1) ?? 0,
        onnxRuns: Math.ceil(n / TEXT_MAX_BATCH),
        perLabelMs: per(s.call),
        tokenizePerLabelMs: per(s.tok),
        tokenizeWarmPerLabelMs: per(s.tokWarm),
        onnxPerLabelMs: per(s.onnx),
        callMs: spread(s.call, 2),
      });
      const last = rows.at(-1)!;
      log(
        `  encode ${n} label(s): ${last.perLabelMs.median} ms/label (tokenize ${last.tokenizePerLabelMs.median}, ONNX ${last.onnxPerLabelMs.median})`,
      );
    }
    return { rows, loadMs, firstRunAfterLoadMs };
  } finally {
    await encoder.dispose();
  }
}

interface Sample {
  totalMs: number;
  visionMs: number;
  textEncoded: number;
  textCached: number;
  textCacheMisses: number;
  textOnnxRuns: number;
  visionEncoderRuns: number;
  visionCacheHits: number;
  visionCacheMisses: number;
}

export async function runClassifyBench(
  options: ClassifyBenchOptions,
  log: (message: string) => void,
): Promise<ClassifyBenchResult> {
  const labelCounts = options.labelCounts ?? DEFAULT_LABEL_COUNTS;
  if (labelCounts.some((n) => !Number.isInteger(n) || n < 1 || n > 1000))
    throw new Error(`label counts must be integers from 1 to 1000, got ${labelCounts.join(", ")}`);
  const templateCount = Math.min(options.templates ?? DEFAULT_TEMPLATE_COUNT, BENCH_TEMPLATES.length);
  const below = labelCounts.filter((n) => n <= (options.templateLabels ?? 24));
  const templateLabels = options.templateLabels ?? (below.length ? Math.max(...below) : labelCounts[0]);
  const rss = rssSampler();
  const loadAtStart = loadAverage();
  const modelDir = options.modelDir ?? bundledModelDir();
  const preset = await resolveModelPreset(modelDir);
  if (!preset.textDir) throw new Error(`${modelDir} has no text tower (preset.json "text")`);
  const textDir = preset.textDir;
  const runs = sessionRunCounter(TEXT_LABEL);
  try {
    const manifest = await readClipTextManifest(textDir);
    const onnxFile = manifest.files.find((f) => f.role === "onnx")!.path;
    let bytes = 0;
    for (const f of manifest.files) bytes += (await stat(path.join(textDir, f.path))).size;
    log(
      `classify: text tower ${path.relative(process.cwd(), textDir)}, ${options.threads} thread(s), ${options.repeats} repeat(s)`,
    );
    const encoding = await benchTextEncoding(
      textDir,
      { threads: options.threads, repeats: options.repeats, labelCounts },
      runs,
      log,
    );
    const c = manifest.config;
    const textModel: TextModelInfo = {
      dir: path.relative(process.cwd(), textDir) || textDir,
      name: manifest.name ?? "clip-text",
      precision: String(manifest.precision ?? "?"),
      width: c.width,
      layers: c.layers,
      vocabSize: c.vocabSize,
      embedDim: c.embedDim,
      contextLength: c.contextLength,
      parameters: await onnxParameters(path.join(textDir, onnxFile)),
      bytes,
      loadMs: round(encoding.loadMs, 0) ?? 0,
      firstRunAfterLoadMs: round(encoding.firstRunAfterLoadMs, 1) ?? 0,
    };

    // The pipeline with the text tower, as the server has it.
    const stages: Partial<Record<PipelineStage, number>> = {};
    let encodeStage = 0;
    const cacheCount = { hits: 0, misses: 0 };
    const t0 = performance.now();
    const pipeline: LocalRegionVqaPipeline = await createPipeline({
      vision: preset.visionDir,
      projector: preset.projectorPath,
      llm: preset.llmPath,
      text: textDir,
      modelId: "shapes",
      device: "cpu",
      gpu: false,
      visionThreads: options.threads,
      llmThreads: 1,
      contextSize: 512,
      maxConversations: 1,
      onStage: (stage, ms) => {
        stages[stage] = (stages[stage] ?? 0) + ms;
        if (stage === "encode") encodeStage++;
      },
      onCache: (hit, cache) => {
        if (cache !== "vision") return;
        if (hit) cacheCount.hits++;
        else cacheCount.misses++;
      },
    });
    const pipelineLoadMs = performance.now() - t0;
    log(`  pipeline loaded in ${pipelineLoadMs.toFixed(0)} ms`);
    const classify: ClassifyRow[] = [];
    let textCache: ClassifyBenchResult["textCache"] = null;
    let firstClassifyMs = NaN;
    const visionManifest = JSON.parse(
      await readFile(path.join(preset.visionDir, "manifest.json"), "utf8"),
    ) as {
      config: { imageSize: number };
    };
    const imageSize = visionManifest.config.imageSize;
    try {
      // Scenes of a seed of their own, one per cold or new-image run, so that the vision cache never answers them.
      let sceneIndex = 0;
      const nextImage = async (): Promise<{ png: Uint8Array; region: Region }> => {
        const { image, masks } = renderScene(generateScene(0xbe7c, sceneIndex++));
        return { png: await encodePng(image), region: { kind: "mask", mask: masks[0] } };
      };
      const run = async (
        image: { png: Uint8Array; region: Region },
        labels: string[],
        templates: string[],
      ): Promise<Sample> => {
        for (const k of Object.keys(stages)) delete stages[k as PipelineStage];
        const before = {
          onnx: runs.count,
          misses: pipeline.stats().textCache!.misses,
          encode: encodeStage,
          hits: cacheCount.hits,
          vmiss: cacheCount.misses,
        };
        const a = performance.now();
        const result = await pipeline.classifyRegions(image.png, [image.region], labels, { templates });
        const totalMs = performance.now() - a;
        const visionMs = (["decode", "preprocess", "encode", "project"] as const).reduce(
          (sum, s) => sum + (stages[s] ?? 0),
          0,
        );
        return {
          totalMs,
          visionMs,
          textEncoded: result.textEncoded,
          textCached: result.textCached,
          textCacheMisses: pipeline.stats().textCache!.misses - before.misses,
          textOnnxRuns: runs.count - before.onnx,
          visionEncoderRuns: encodeStage - before.encode,
          visionCacheHits: cacheCount.hits - before.hits,
          visionCacheMisses: cacheCount.misses - before.vmiss,
        };
      };

      // ORT's first runs (vision and text) on labels of their own; then the text cache is emptied.
      const w = await run(await nextImage(), ["warm-up label"], [BENCH_TEMPLATES[0]]);
      firstClassifyMs = w.totalMs;

      const configs: Array<{ labels: number; templates: number }> = labelCounts.map((n) => ({
        labels: n,
        templates: 1,
      }));
      if (templateCount > 1) configs.push({ labels: templateLabels, templates: templateCount });
      for (const config of configs) {
        const labels = benchLabels(config.labels);
        const templates = BENCH_TEMPLATES.slice(0, config.templates);
        const samples: Record<ClassifyScenario, Sample[]> = { cold: [], "new image": [], warm: [] };
        for (let r = 0; r < options.repeats; r++) {
          pipeline.clearTextCache();
          const cold = await run(await nextImage(), labels, templates);
          samples.cold.push(cold);
          if (r === 0 && config.templates === 1 && config.labels === Math.max(...labelCounts)) {
            const s = pipeline.stats().textCache!;
            const keyChars = templated(labels, templates).reduce(
              (a, t) => a + textDir.length + 1 + t.length,
              0,
            );
            textCache = { labels: config.labels, entries: s.entries, bytes: s.bytes, keyChars };
          }
          const image = await nextImage();
          samples["new image"].push(await run(image, labels, templates));
          samples.warm.push(await run(image, labels, templates));
        }
        for (const scenario of ["cold", "new image", "warm"] as const) {
          const xs = samples[scenario];
          const sum = (f: (s: Sample) => number) => xs.reduce((a, s) => a + f(s), 0);
          classify.push({
            labels: config.labels,
            templates: config.templates,
            scenario,
            runs: xs.length,
            totalMs: spread(
              xs.map((s) => s.totalMs),
              2,
            ),
            visionMs: spread(
              xs.map((s) => s.visionMs),
              2,
            ),
            otherMs: spread(
              xs.map((s) => s.totalMs - s.visionMs),
              2,
            ),
            textEncoded: sum((s) => s.textEncoded),
            textCached: sum((s) => s.textCached),
            textCacheMisses: sum((s) => s.textCacheMisses),
            textOnnxRuns: sum((s) => s.textOnnxRuns),
            visionEncoderRuns: sum((s) => s.visionEncoderRuns),
            visionCacheHits: sum((s) => s.visionCacheHits),
            visionCacheMisses: sum((s) => s.visionCacheMisses),
          });
        }
        const [cold, , warm] = classify.slice(-3);
        log(
          `  classify ${config.labels} label(s) x ${config.templates} template(s): cold ${cold.totalMs.median} ms, warm ${warm.totalMs.median} ms`,
        );
      }
    } finally {
      await pipeline.dispose();
    }
    const synthetic = benchLabels(Math.max(...labelCounts, 25))[24] ?? null;
    return {
      options: { ...options, labelCounts, templates: templateCount, templateLabels },
      device: "cpu",
      cores: os.availableParallelism(),
      loadAverage: { start: loadAtStart, end: loadAverage() },
      textModel,
      vision: { dir: path.relative(process.cwd(), preset.visionDir) || preset.visionDir, imageSize },
      pipelineLoadMs: round(pipelineLoadMs, 0) ?? 0,
      firstClassifyMs: round(firstClassifyMs, 1) ?? 0,
      templatesUsed: BENCH_TEMPLATES.slice(0, Math.max(templateCount, 1)),
      syntheticExample: synthetic,
      encode: encoding.rows,
      classify,
      textCache,
      peakRssMiB: rss.stop(),
    };
  } finally {
    runs.restore();
  }
}
