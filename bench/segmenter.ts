/**
 * Segmenter stage (src/segmenter) on the CPU, "encode once, click many":
 *   - the bundled shapes segmenter (models/shapes/segmenter, picked up as soon as its manifest.json
 *     exists; until then the same architecture with random weights in a temp folder), and
 *   - a random graph with exactly SAM 2.1-tiny's inputs and outputs (1024 input, embeddings
 *     32x256x256, 64x128x128, 256x64x64, masks 256x256) but a small convolutional body, not Hiera.
 * For each: load time; the first click on a new image (encode, of which SAM preprocessing, + decode +
 * post-process); further clicks on the same image (decode + post-process, embeddings cached), median
 * and p90; embedding bytes per cached image. Beside them, the bundled Alpha-CLIP's preprocessing and
 * encode of the same image and region, and the multiply-accumulate counts of the stand-in's graphs
 * next to an estimate for the real Hiera-tiny encoder.
 *
 * Run it with `npm run bench -- --only segmenter [--threads 2] [--seg-images 3] [--seg-clicks 10]`.
 */
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import {
  SAM21_TINY_SHAPED_ARCHITECTURE,
  SHAPES_SEGMENTER_ARCHITECTURE,
  SamSegmenter,
  miniSamParameterShapes,
  SamProcessor,
  randomMiniSamWeights,
  writeMiniSamFolder,
  type MiniSamArchitecture,
  type SegmentPrompt,
  type SegmentResult,
} from "../src/segmenter/index.js";
import { generateScene, objectBox, renderScene } from "../src/shapes/index.js";
import {
  AlphaClipEncoder,
  boxToMask,
  decodeImage,
  LlavaImageProcessor,
  type Box,
  type Mask,
  type RgbImage,
} from "../src/vision/index.js";
import { resolveModelPreset } from "../src/models/index.js";
import { benchImage } from "./images.js";
import { bundledModelDir } from "./model-sets.js";
import { median, quantile, round, rssSampler } from "./stats.js";

export interface SegmenterBenchOptions {
  /** ONNX Runtime intra-op threads for the segmenters and Alpha-CLIP. */
  threads: number;
  /** New images per model and image kind (one first click each). */
  images: number;
  /** Further clicks on each image after the first. */
  clicks: number;
  /** Also time the SAM 2.1-shaped graph on photo-sized (1024x768) images. */
  photo: boolean;
  /** The trained bundled segmenter's folder; default models/shapes/segmenter. */
  bundledDir?: string;
}

/** Median and p90 in ms (null when nothing was measured). */
export interface Spread {
  median: number | null;
  p90: number | null;
}

export interface SegmenterRow {
  /** Which images: "shapes scenes" or "photo 1024x768". */
  images: string;
  /** Their sizes, e.g. "173x286, 301x190". */
  sizes: string;
  imageCount: number;
  /** First click on a new image: medians over the images. */
  firstClick: {
    /** segment()'s encodeMs: SAM preprocessing + the encoder run. */
    encodeMs: number | null;
    /** Of encodeMs: SAM preprocessing alone (resize to the input frame, normalise), timed apart. */
    preprocessMs: number | null;
    /** encodeMs minus that image's preprocessing: the encoder run (median, and the fastest image). */
    encoderRunMs: number | null;
    encoderRunMinMs: number | null;
    decodeMs: number | null;
    postprocessMs: number | null;
    /** Wall time of the segment() call. */
    totalMs: number | null;
  };
  /** Further clicks on the same images (embeddings cached). */
  furtherClicks: {
    count: number;
    decodeMs: Spread;
    postprocessMs: Spread;
    /** Wall time of the segment() call: decode + post-process + image hash, prompt and embedding copy. */
    totalMs: Spread;
    /** Wall time less decode and post-process: image hash (cache key), prompt, embedding copy. */
    otherMs: Spread;
    /** How many of them found the embeddings cached (must be all). */
    cached: number;
  };
  /** Clicks whose chosen mask was empty (segment_empty; untrained weights): timed by wall clock only. */
  emptyMasks: number;
  /** cacheStats().bytes per cached image. */
  embeddingBytesPerImage: number | null;
  /** The bundled Alpha-CLIP on the same image and region: medians over the images. */
  alphaClip: { preprocessMs: number | null; encodeMs: number | null };
}

export interface SegmenterModelResult {
  key: "bundled" | "sam21-tiny-shaped";
  label: string;
  /** Where the graphs came from. */
  source: string;
  note?: string;
  imageSize: number;
  maskSize: number;
  /** Encoder outputs cached per image, e.g. "32x256x256". */
  embeddings: string[];
  /** ms to write the random folder (absent for the trained model). */
  writeMs?: number;
  modelBytes: number;
  loadMs: number;
  /** The first segment() after loading (ORT plans memory, packs weights); not in the rows. */
  firstRunAfterLoadMs: number;
  /** Conv (and Gemm) multiply-accumulates per image of the encoder and per prompt of the decoder. */
  encoderMacs: number;
  decoderMacs: number;
  /** Parameters the MAC count does not know the resolution of (should be none). */
  uncountedLayers: string[];
  rows: SegmenterRow[];
}

export interface SegmenterBenchResult {
  options: SegmenterBenchOptions;
  device: "cpu";
  cores: number;
  /** 1/5/15-minute load averages when the part started and ended (the machine may be shared). */
  loadAverage: { start: number[]; end: number[] };
  alphaClip: { dir: string; imageSize: number; loadMs: number; firstRunAfterLoadMs: number };
  models: SegmenterModelResult[];
  /** Our estimate of SAM 2.1 Hiera-tiny's encoder MACs at 1024 (see hieraTinyEncoderMacs). */
  hieraTinyEncoderMacsEstimate: number;
  /** Second-hand measurement of the real SAM 2.1-tiny in onnxruntime-node, and its encode time. */
  reference: string;
  referenceEncodeSeconds: number;
  peakRssMiB: number;
}

export const SAM21_TINY_REFERENCE_ENCODE_S = 1.06;
export const SAM21_TINY_REFERENCE =
  "A public project measured the real SAM 2.1-tiny ONNX export (Hiera-tiny encoder) in onnxruntime-node on 4 CPU threads at about 1.06 s per image encode and 15-23 ms per decode (second-hand, not measured here).";

/** Output side of each miniature-SAM conv (mini-sam-graph.ts), from the layer's name. */
function convSide(arch: MiniSamArchitecture, layer: string): number | undefined {
  const [s0, s1, s2] = arch.embedStrides;
  const S = arch.imageSize;
  if (/^encoder\.c0/.test(layer) || /^decoder\.(u2|out)$/.test(layer)) return S / s0;
  if (/^encoder\.c1/.test(layer) || layer === "decoder.u1") return S / s1;
  if (/^encoder\.c2/.test(layer) || /^decoder\.(t1|t2|t3|r1)$/.test(layer)) return S / s2;
  return undefined;
}

/**
 * Multiply-accumulates of the miniature SAM's convolutions (out side² x weight elements) and the
 * decoder's score head; element-wise ops (ReLU, point maps, resizes) are not counted.
 */
export function miniSamMacs(arch: MiniSamArchitecture): {
  encoder: number;
  decoder: number;
  uncounted: string[];
} {
  let encoder = 0;
  let decoder = 0;
  const uncounted: string[] = [];
  for (const [key, shape] of Object.entries(miniSamParameterShapes(arch))) {
    if (!key.endsWith(".weight")) continue;
    const layer = key.slice(0, -".weight".length);
    const elements = shape.reduce((a, b) => a * b, 1);
    let macs: number;
    if (layer === "decoder.head") macs = elements;
    else {
      const side = convSide(arch, layer);
      if (side === undefined) {
        uncounted.push(layer);
        continue;
      }
      macs = side * side * elements;
    }
    if (layer.startsWith("encoder.")) encoder += macs;
    else decoder += macs;
  }
  return { encoder, decoder, uncounted };
}

/**
 * Our estimate of SAM 2.1 Hiera-tiny's image encoder at 1024 x 1024, following sam2.1_hiera_t.yaml
 * and hieradet.py: patch embed (7x7 stride 4, 3 -> 96); 12 blocks in stages [1, 2, 7, 2] with widths
 * 96/192/384/768, MLP ratio 4, windows 8/4/14/7 (a stage's first block keeps the previous stage's
 * window and max-pools its queries 2x), global attention in blocks 5, 7, 9; the FPN neck's 1x1 convs
 * to 256 on all four levels, and the mask decoder's conv_s0/conv_s1 (256 -> 32, 256 -> 64) that the
 * ONNX export runs in its encoder. Counts the linear layers, convs and attention matmuls (QK^T and
 * AV, windows padded as the code pads them); norms, GELU and softmax are left out.
 */
export function hieraTinyEncoderMacs(): number {
  const stages = [1, 2, 7, 2];
  const windows = [8, 4, 14, 7];
  const globalBlocks = new Set([5, 7, 9]);
  let side = 1024 / 4;
  let dim = 96;
  let macs = side * side * 96 * 3 * 7 * 7; // patch embed
  const stageEnds = stages.map((_, i) => stages.slice(0, i + 1).reduce((a, b) => a + b, 0) - 1);
  let stage = 0;
  const levels: Array<{ side: number; dim: number }> = [];
  for (let i = 0; i < stageEnds[stageEnds.length - 1] + 1; i++) {
    const window = globalBlocks.has(i) ? 0 : windows[stage]; // lags a block behind the stage change
    const change = stageEnds.slice(0, -1).includes(i - 1);
    const dimOut = change ? dim * 2 : dim;
    if (change) stage++;
    const tokensIn = side * side;
    const sideOut = change ? side / 2 : side;
    const tokensOut = sideOut * sideOut;
    if (dim !== dimOut) macs += tokensIn * dim * dimOut; // shortcut projection
    macs += tokensIn * dim * 3 * dimOut; // qkv
    // Attention: per window, q tokens x k tokens x dimOut, twice (QK^T and AV).
    if (window === 0) {
      macs += 2 * tokensOut * tokensIn * dimOut;
    } else {
      const padded = Math.ceil(side / window) * window;
      const count = (padded / window) ** 2;
      const k = window * window;
      const q = change ? (window / 2) ** 2 : k;
      macs += 2 * count * q * k * dimOut;
    }
    macs += tokensOut * dimOut * dimOut; // attention output projection
    macs += tokensOut * 2 * 4 * dimOut * dimOut; // MLP
    dim = dimOut;
    side = sideOut;
    if (stageEnds.includes(i)) levels.push({ side, dim });
  }
  for (const l of levels) macs += l.side * l.side * l.dim * 256; // FPN lateral 1x1 convs
  macs += 256 * 256 * 256 * 32 + 128 * 128 * 256 * 64; // conv_s0, conv_s1
  return macs;
}

interface BenchScene {
  image: RgbImage;
  /** The region the first click is about (for Alpha-CLIP). */
  mask: Mask;
  /** Where the clicks go: the first one, then the further ones in turn. */
  targets: Box[];
  label: string;
}

function shapesScenes(count: number, first = 0): BenchScene[] {
  const out: BenchScene[] = [];
  for (let i = first; out.length < count; i++) {
    const scene = generateScene(4242, i);
    if (scene.objects.length === 0) continue;
    const { image, masks } = renderScene(scene);
    out.push({
      image,
      mask: masks[0],
      targets: scene.objects.map(objectBox),
      label: `${image.width}x${image.height}`,
    });
  }
  return out;
}

async function photoScenes(count: number): Promise<BenchScene[]> {
  const out: BenchScene[] = [];
  for (let i = 0; i < count; i++) {
    const b = await benchImage(500 + i, 1024, 768);
    const image = await decodeImage(b.png);
    out.push({
      image,
      mask: boxToMask(b.box, image.width, image.height),
      targets: [b.box],
      label: `${image.width}x${image.height}`,
    });
  }
  return out;
}

/** Click `n` on a scene: the centre of a target (in turn), moved a little; every third adds an exclude click on another. */
function clickFor(scene: BenchScene, n: number): SegmentPrompt {
  const target = scene.targets[n % scene.targets.length];
  const [x1, y1, x2, y2] = target;
  const jitter = (n % 5) / 10 - 0.2; // -0.2 .. 0.2 of the box
  const x = Math.round(x1 + (x2 - x1) * (0.5 + jitter * 0.5));
  const y = Math.round(y1 + (y2 - y1) * (0.5 - jitter * 0.5));
  const points: SegmentPrompt["points"] = [{ x, y, label: 1 }];
  if (n % 3 === 2) {
    const other = scene.targets[(n + 1) % scene.targets.length];
    if (other !== target) {
      points.push({
        x: Math.round((other[0] + other[2]) / 2),
        y: Math.round((other[1] + other[3]) / 2),
        label: 0,
      });
    } else {
      // One target (photo): exclude a background point in a corner.
      points.push({ x: 2, y: 2, label: 0 });
    }
  }
  return { points };
}

interface Click {
  result?: SegmentResult;
  wallMs: number;
}

async function click(segmenter: SamSegmenter, scene: BenchScene, n: number): Promise<Click> {
  const t0 = performance.now();
  try {
    const result = await segmenter.segment(scene.image, clickFor(scene, n));
    return { result, wallMs: performance.now() - t0 };
  } catch (err) {
    const wallMs = performance.now() - t0;
    if ((err as { code?: string }).code === "segment_empty") return { wallMs };
    throw err;
  }
}

const r1 = (v: number): number | null => round(v, 1);
const spread = (values: number[]): Spread => ({
  median: r1(median(values)),
  p90: r1(quantile(values, 0.9)),
});

class AlphaClipTimer {
  private constructor(readonly encoder: AlphaClipEncoder) {}
  static async load(dir: string, threads: number): Promise<{ timer: AlphaClipTimer; loadMs: number }> {
    const t0 = performance.now();
    const encoder = await AlphaClipEncoder.load(dir, { device: "cpu", threads });
    return { timer: new AlphaClipTimer(encoder), loadMs: performance.now() - t0 };
  }
  async time(image: RgbImage, mask: Mask): Promise<{ preprocessMs: number; encodeMs: number }> {
    let t = performance.now();
    // The server's path: the native kernels in the imaging pool.
    const processor = new LlavaImageProcessor(this.encoder.imageSize);
    const [{ pixelValues }, alpha] = await Promise.all([processor.image(image), processor.alphas([mask])]);
    const preprocessMs = performance.now() - t;
    t = performance.now();
    await this.encoder.encode({ pixelValues, alpha });
    return { preprocessMs, encodeMs: performance.now() - t };
  }
  dispose(): Promise<void> {
    return this.encoder.dispose();
  }
}

async function measureRow(
  segmenter: SamSegmenter,
  alphaClip: AlphaClipTimer,
  scenes: BenchScene[],
  kind: string,
  options: SegmenterBenchOptions,
): Promise<SegmenterRow> {
  const first = {
    encode: [] as number[],
    prep: [] as number[],
    run: [] as number[],
    decode: [] as number[],
    post: [] as number[],
  };
  const firstWall: number[] = [];
  const further = {
    decode: [] as number[],
    post: [] as number[],
    wall: [] as number[],
    other: [] as number[],
    cached: 0,
    count: 0,
  };
  const alpha = { prep: [] as number[], encode: [] as number[] };
  let empty = 0;
  let bytesPerImage: number | null = null;
  for (const scene of scenes) {
    segmenter.clearCache();
    const c0 = await click(segmenter, scene, 0);
    firstWall.push(c0.wallMs);
    if (c0.result) {
      const t = c0.result.timings;
      if (t.embeddingsCached) throw new Error("the first click on a new image found its embeddings cached");
      first.encode.push(t.encodeMs);
      first.decode.push(t.decodeMs);
      first.post.push(t.postprocessMs);
    } else empty++;
    const stats = segmenter.cacheStats();
    if (stats.entries === 1) bytesPerImage = stats.bytes;
    for (let n = 1; n <= options.clicks; n++) {
      const c = await click(segmenter, scene, n);
      further.count++;
      further.wall.push(c.wallMs);
      if (!c.result) {
        empty++;
        continue;
      }
      const t = c.result.timings;
      if (t.embeddingsCached) further.cached++;
      further.decode.push(t.decodeMs);
      further.post.push(t.postprocessMs);
      further.other.push(c.wallMs - t.decodeMs - t.postprocessMs);
    }
    // SAM preprocessing alone, once per image (it is inside encodeMs above).
    const t = performance.now();
    await new SamProcessor(segmenter.config).image(scene.image);
    const prepMs = performance.now() - t;
    first.prep.push(prepMs);
    if (c0.result) first.run.push(c0.result.timings.encodeMs - prepMs);
    const a = await alphaClip.time(scene.image, scene.mask);
    alpha.prep.push(a.preprocessMs);
    alpha.encode.push(a.encodeMs);
  }
  return {
    images: kind,
    sizes: scenes.map((s) => s.label).join(", "),
    imageCount: scenes.length,
    firstClick: {
      encodeMs: r1(median(first.encode)),
      preprocessMs: r1(median(first.prep)),
      encoderRunMs: r1(median(first.run)),
      encoderRunMinMs: r1(first.run.length ? Math.min(...first.run) : NaN),
      decodeMs: r1(median(first.decode)),
      postprocessMs: r1(median(first.post)),
      totalMs: r1(median(firstWall)),
    },
    furtherClicks: {
      count: further.count,
      decodeMs: spread(further.decode),
      postprocessMs: spread(further.post),
      totalMs: spread(further.wall),
      otherMs: spread(further.other),
      cached: further.cached,
    },
    emptyMasks: empty,
    embeddingBytesPerImage: bytesPerImage,
    alphaClip: { preprocessMs: r1(median(alpha.prep)), encodeMs: r1(median(alpha.encode)) },
  };
}

function folderBytes(segmenter: SamSegmenter): number {
  return segmenter.manifest.files.reduce((a, f) => a + f.bytes, 0);
}

async function writeRandom(
  arch: MiniSamArchitecture,
  name: string,
  tmp: string,
): Promise<{ dir: string; writeMs: number }> {
  const dir = path.join(tmp, name);
  const t0 = performance.now();
  await writeMiniSamFolder(dir, arch, randomMiniSamWeights(arch, 1), { name });
  return { dir, writeMs: performance.now() - t0 };
}

export async function runSegmenterBench(
  options: SegmenterBenchOptions,
  log: (message: string) => void,
): Promise<SegmenterBenchResult> {
  const rss = rssSampler();
  const loadAverage = () => os.loadavg().map((l) => round(l, 2) ?? 0);
  const loadAtStart = loadAverage();
  const tmp = await mkdtemp(path.join(os.tmpdir(), "region-vqa-bench-segmenter-"));
  const visionDir = (await resolveModelPreset(bundledModelDir())).visionDir;
  log(`segmenter: Alpha-CLIP from ${path.relative(process.cwd(), visionDir)}, ${options.threads} thread(s)`);
  const { timer: alphaClip, loadMs: alphaLoadMs } = await AlphaClipTimer.load(visionDir, options.threads);
  const models: SegmenterModelResult[] = [];
  try {
    // Warm-up of Alpha-CLIP on a scene the rows do not use.
    const warm = shapesScenes(1, 1000)[0];
    let t = performance.now();
    await alphaClip.time(warm.image, warm.mask);
    const alphaFirstRunMs = performance.now() - t;

    const shapes = shapesScenes(options.images);
    const photos = options.photo ? await photoScenes(options.images) : [];

    const trainedDir = options.bundledDir ?? path.join(bundledModelDir(), "segmenter");
    const randomBundled = async (why: string) => ({
      ...(await writeRandom(SHAPES_SEGMENTER_ARCHITECTURE, "shapes-segmenter-random", tmp)),
      source: "SHAPES_SEGMENTER_ARCHITECTURE, random weights (seed 1), temp folder",
      label: "bundled shapes segmenter architecture, random weights",
      note: `${why}: its architecture with random weights stands in (same compute, untrained masks)`,
    });
    const candidates: Array<{
      key: SegmenterModelResult["key"];
      arch: MiniSamArchitecture;
      open: () => Promise<{ dir: string; writeMs?: number; source: string; label: string; note?: string }>;
      rows: Array<[string, BenchScene[]]>;
    }> = [
      {
        key: "bundled",
        arch: SHAPES_SEGMENTER_ARCHITECTURE,
        open: async () => {
          if (existsSync(path.join(trainedDir, "manifest.json"))) {
            return {
              dir: trainedDir,
              source: path.relative(process.cwd(), trainedDir) || trainedDir,
              label: "bundled shapes segmenter (trained)",
            };
          }
          return randomBundled("models/shapes/segmenter is not there yet");
        },
        rows: [["shapes scenes", shapes]],
      },
      {
        key: "sam21-tiny-shaped",
        arch: SAM21_TINY_SHAPED_ARCHITECTURE,
        open: async () => ({
          ...(await writeRandom(SAM21_TINY_SHAPED_ARCHITECTURE, "sam21-tiny-shaped-random", tmp)),
          source: "SAM21_TINY_SHAPED_ARCHITECTURE, random weights (seed 1), temp folder",
          label: "SAM 2.1-tiny-shaped stand-in (real I/O sizes, small conv body, random weights)",
          note: "The stand-in has SAM 2.1-tiny's inputs and outputs (so preprocessing, embedding cache and post-processing cost what they would) but not its compute: a small conv body instead of Hiera-tiny, and a conv decoder instead of SAM's two-way transformer.",
        }),
        rows: [
          ["shapes scenes", shapes],
          ...(options.photo ? [["photo 1024x768", photos] as [string, BenchScene[]]] : []),
        ],
      },
    ];

    for (const c of candidates) {
      const opened = await c.open();
      log(`segmenter: ${c.key} from ${opened.source}`);
      t = performance.now();
      let segmenter: SamSegmenter;
      try {
        segmenter = await SamSegmenter.load(opened.dir, { device: "cpu", threads: options.threads });
      } catch (err) {
        if (opened.dir !== trainedDir) throw err;
        // The trainer may be rewriting the folder: say so and measure the random stand-in.
        log(`segmenter: ${trainedDir} did not load (${(err as Error).message}); using random weights`);
        Object.assign(
          opened,
          await randomBundled(`${opened.source} did not load (${(err as Error).message})`),
        );
        t = performance.now();
        segmenter = await SamSegmenter.load(opened.dir, { device: "cpu", threads: options.threads });
      }
      const loadMs = performance.now() - t;
      try {
        // The first run after loading is slower (memory planning, weight packing): timed apart.
        const w = await click(segmenter, warm, 0);
        const config = segmenter.config;
        // A folder written by writeMiniSamFolder records its architecture; the trained one should too.
        const a = (config.architecture as MiniSamArchitecture | undefined) ?? c.arch;
        const macs = miniSamMacs(a);
        const model: SegmenterModelResult = {
          key: c.key,
          label: opened.label,
          source: opened.source,
          ...(opened.note ? { note: opened.note } : {}),
          imageSize: config.imageSize,
          maskSize: config.maskSize,
          embeddings: a.embedChannels.map((ch, i) => {
            const side = a.imageSize / a.embedStrides[i];
            return `${ch}x${side}x${side}`;
          }),
          ...(opened.writeMs !== undefined ? { writeMs: Math.round(opened.writeMs) } : {}),
          modelBytes: folderBytes(segmenter),
          loadMs: Math.round(loadMs),
          firstRunAfterLoadMs: Math.round(w.wallMs),
          encoderMacs: macs.encoder,
          decoderMacs: macs.decoder,
          uncountedLayers: macs.uncounted,
          rows: [],
        };
        for (const [kind, scenes] of c.rows) {
          log(`segmenter: ${c.key} on ${scenes.length} ${kind}, ${options.clicks} further click(s) each`);
          model.rows.push(await measureRow(segmenter, alphaClip, scenes, kind, options));
        }
        models.push(model);
      } finally {
        await segmenter.dispose();
      }
    }
    return {
      options,
      device: "cpu",
      cores: os.availableParallelism(),
      loadAverage: { start: loadAtStart, end: loadAverage() },
      alphaClip: {
        dir: path.relative(process.cwd(), visionDir) || visionDir,
        imageSize: alphaClip.encoder.imageSize,
        loadMs: Math.round(alphaLoadMs),
        firstRunAfterLoadMs: Math.round(alphaFirstRunMs),
      },
      models,
      hieraTinyEncoderMacsEstimate: hieraTinyEncoderMacs(),
      reference: SAM21_TINY_REFERENCE,
      referenceEncodeSeconds: SAM21_TINY_REFERENCE_ENCODE_S,
      peakRssMiB: rss.stop(),
    };
  } finally {
    rss.stop();
    await alphaClip.dispose();
    await rm(tmp, { recursive: true, force: true });
  }
}
