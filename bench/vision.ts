/**
 * Vision stage benchmark on this machine's CPU (or a GPU with --device webgpu or cuda):
 *   - preprocessing ms/image: decode + region + LLaVA preprocessing (pad, Pillow-exact bicubic to 336,
 *     normalisation, mask alpha) of the golden 640x427 image and mask;
 *   - encoder ms/image and peak RSS for a full-size Alpha-CLIP ViT-L/14@336 with random weights, fp32
 *     and fp16 weights, each precision measured in its own child process so peaks do not mix.
 * The random models are written on demand through the converter's in-memory API into
 * $TMPDIR/region-vqa-bench (reused on later runs; never committed).
 *
 *   npm run bench:vision -- [--runs 3] [--batch 1] [--threads N] [--device auto|webgpu|cuda|cpu] [--precisions fp32,fp16]
 */
import { spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import type { AlphaClipVisionConfig, StateDict } from "../src/vision/index.js";
import {
  AlphaClipEncoder,
  decodeImage,
  decodeMaskImage,
  preprocessForLlava,
  regionToMask,
  writeAlphaClipModelFolder,
  type EncoderDevice,
} from "../src/vision/index.js";

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const golden = path.resolve(repoRoot, "test/fixtures/golden/alpha-clip-tiny");
const cacheRoot = path.join(os.tmpdir(), "region-vqa-bench");

function arg(name: string, fallback: string): string {
  const at = process.argv.indexOf(`--${name}`);
  return at >= 0 && process.argv[at + 1] !== undefined ? process.argv[at + 1] : fallback;
}

/** ViT-L/14@336 as released (clip_l14_336_*): 24 blocks of width 1024, 16 heads, 24x24 patches. */
const VIT_L14_336: AlphaClipVisionConfig = {
  width: 1024,
  layers: 24,
  heads: 16,
  patchSize: 14,
  imageSize: 336,
  gridSize: 24,
  outputDim: 768,
  llavaFeatureLayer: 23,
};

/** xorshift32 + Box-Muller; deterministic per tensor name so reruns write identical folders. */
function seededNormal(seedText: string): () => number {
  let s = 2166136261;
  for (let i = 0; i < seedText.length; i++) s = Math.imul(s ^ seedText.charCodeAt(i), 16777619) >>> 0;
  if (s === 0) s = 1;
  const uniform = () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return (s + 0.5) / 4294967296;
  };
  return () => Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform());
}

/**
 * A state dict whose tensors are generated when read, so the 1.2 GB of weights never sit in memory
 * at once. Scales keep activations in a realistic range (LayerNorm 1/0, weights ~N(0, 0.02)).
 */
function randomVitStateDict(c: AlphaClipVisionConfig): StateDict {
  const { width: w, patchSize: p, gridSize: g, outputDim: d } = c;
  const shapes = new Map<string, number[]>([
    ["class_embedding", [w]],
    ["positional_embedding", [g * g + 1, w]],
    ["proj", [w, d]],
    ["conv1.weight", [w, 3, p, p]],
    ["conv1_alpha.weight", [w, 1, p, p]],
    ["ln_pre.weight", [w]],
    ["ln_pre.bias", [w]],
    ["ln_post.weight", [w]],
    ["ln_post.bias", [w]],
  ]);
  for (let i = 0; i < c.layers; i++) {
    const b = `transformer.resblocks.${i}.`;
    shapes.set(`${b}attn.in_proj.weight`, [3 * w, w]);
    shapes.set(`${b}attn.in_proj.bias`, [3 * w]);
    shapes.set(`${b}attn.out_proj.weight`, [w, w]);
    shapes.set(`${b}attn.out_proj.bias`, [w]);
    shapes.set(`${b}ln_1.weight`, [w]);
    shapes.set(`${b}ln_1.bias`, [w]);
    shapes.set(`${b}mlp.c_fc.weight`, [4 * w, w]);
    shapes.set(`${b}mlp.c_fc.bias`, [4 * w]);
    shapes.set(`${b}mlp.c_proj.weight`, [w, 4 * w]);
    shapes.set(`${b}mlp.c_proj.bias`, [w]);
    shapes.set(`${b}ln_2.weight`, [w]);
    shapes.set(`${b}ln_2.bias`, [w]);
  }
  const get = (key: string) => {
    const shape = shapes.get(key);
    if (!shape) throw new Error(`no tensor ${key}`);
    return shape;
  };
  return {
    keys: () => [...shapes.keys()],
    has: (key) => shapes.has(key),
    info: (key) => ({ dtype: "F32", shape: [...get(key)] }),
    read: (key) => {
      const n = get(key).reduce((a, b) => a * b, 1);
      const data = new Float32Array(n);
      if (/ln_\w+\.weight$/.test(key)) return data.fill(1);
      if (/ln_\w+\.bias$/.test(key)) return data;
      const rand = seededNormal(key);
      const scale = key.endsWith(".bias") ? 0.01 : 0.02;
      for (let i = 0; i < n; i++) data[i] = rand() * scale;
      return data;
    },
    close: () => {},
    source: { format: "memory" },
  };
}

async function ensureModel(precision: "fp32" | "fp16"): Promise<string> {
  const dir = path.join(cacheRoot, `alpha-clip-vit-l14-336-random-${precision}`);
  if (existsSync(path.join(dir, "manifest.json"))) return dir;
  const started = performance.now();
  process.stderr.write(`bench: writing random ViT-L/14@336 (${precision}) to ${dir} ...\n`);
  await writeAlphaClipModelFolder(randomVitStateDict(VIT_L14_336), VIT_L14_336, dir, {
    precision,
    name: `alpha-clip-vit-l14-336-random-${precision}`,
  });
  process.stderr.write(`bench: written in ${((performance.now() - started) / 1000).toFixed(1)} s\n`);
  return dir;
}

interface ChildResult {
  precision: string;
  provider: string;
  threads: number;
  batch: number;
  loadMs: number;
  firstRunMs: number;
  encoderMsPerImage: number;
  encoderMsRuns: number[];
  peakRssMiB: number;
  modelBytes: number;
}

const median = (v: number[]) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)];

async function child(): Promise<void> {
  const dir = arg("model", "");
  const runs = Number(arg("runs", "3"));
  const batch = Number(arg("batch", "1"));
  const device = arg("device", "auto") as EncoderDevice;
  const threads = Number(arg("threads", String(os.availableParallelism())));
  const image = await decodeImage(readFileSync(path.join(golden, "big_image.png")));
  const mask = await decodeMaskImage(
    readFileSync(path.join(golden, "big_mask.png")),
    image.width,
    image.height,
  );
  const t0 = performance.now();
  const encoder = await AlphaClipEncoder.load(dir, {
    device,
    threads,
    logger: { info: (m) => process.stderr.write(`${m}\n`) },
  });
  const loadMs = performance.now() - t0;
  const pre = preprocessForLlava(image, mask, encoder.imageSize);
  const plane = encoder.imageSize ** 2;
  const alpha = new Float32Array(batch * plane);
  for (let i = 0; i < batch; i++) alpha.set(pre.alpha.data, i * plane);
  const input = {
    pixelValues: pre.pixelValues,
    alpha: { data: alpha, shape: [batch, 1, encoder.imageSize, encoder.imageSize] },
  };
  let t = performance.now();
  await encoder.encode(input); // warm-up: ORT plans memory and packs weights on the first run
  const firstRunMs = performance.now() - t;
  const times: number[] = [];
  for (let i = 0; i < runs; i++) {
    t = performance.now();
    await encoder.encode(input);
    times.push((performance.now() - t) / batch);
  }
  await encoder.dispose();
  const manifest = JSON.parse(readFileSync(path.join(dir, "manifest.json"), "utf8")) as {
    precision: string;
    files: Array<{ bytes: number }>;
  };
  const result: ChildResult = {
    precision: manifest.precision,
    provider: encoder.provider,
    threads,
    batch,
    loadMs: Math.round(loadMs),
    firstRunMs: Math.round(firstRunMs),
    encoderMsPerImage: Math.round(median(times)),
    encoderMsRuns: times.map(Math.round),
    // maxRSS is in KiB and covers the worker thread (same process).
    peakRssMiB: Math.round(process.resourceUsage().maxRSS / 1024),
    modelBytes: manifest.files.reduce((a, f) => a + f.bytes, 0),
  };
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

async function preprocessBench(iterations: number) {
  const imageBytes = readFileSync(path.join(golden, "big_image.png"));
  const maskBytes = readFileSync(path.join(golden, "big_mask.png"));
  const decodeMs: number[] = [];
  const regionMs: number[] = [];
  const prepMs: number[] = [];
  for (let i = 0; i < iterations; i++) {
    let t = performance.now();
    const image = await decodeImage(imageBytes);
    decodeMs.push(performance.now() - t);
    t = performance.now();
    const mask = regionToMask(
      { kind: "mask", mask: await decodeMaskImage(maskBytes, image.width, image.height) },
      image.width,
      image.height,
    );
    regionMs.push(performance.now() - t);
    t = performance.now();
    preprocessForLlava(image, mask, 336);
    prepMs.push(performance.now() - t);
  }
  const r = (v: number[]) => Math.round(median(v) * 10) / 10;
  return {
    image: "golden big_image.png 640x427 + big_mask.png, LLaVA path at 336",
    iterations,
    decodeMs: r(decodeMs),
    maskDecodeMs: r(regionMs),
    preprocessMs: r(prepMs),
    totalMsPerImage: r(decodeMs.map((d, i) => d + regionMs[i] + prepMs[i])),
  };
}

function runChild(model: string): Promise<ChildResult> {
  const passthrough = ["runs", "batch", "device", "threads"].flatMap((k) =>
    process.argv.includes(`--${k}`) ? [`--${k}`, arg(k, "")] : [],
  );
  return new Promise((resolve, reject) => {
    const p = spawn(
      process.execPath,
      ["--import", "tsx", fileURLToPath(import.meta.url), "--child", "--model", model, ...passthrough],
      {
        stdio: ["ignore", "pipe", "inherit"],
      },
    );
    let out = "";
    p.stdout.on("data", (d: Buffer) => (out += d.toString()));
    p.on("error", reject);
    p.on("exit", (code) => {
      if (code !== 0) reject(new Error(`bench child for ${model} exited with ${code}`));
      else resolve(JSON.parse(out.trim().split("\n").pop()!) as ChildResult);
    });
  });
}

async function parent(): Promise<void> {
  const loadAtStart = Math.round(os.loadavg()[0] * 100) / 100;
  const precisions = arg("precisions", "fp32,fp16").split(",") as Array<"fp32" | "fp16">;
  const preprocessing = await preprocessBench(Number(arg("prep-iterations", "10")));
  const encoders: ChildResult[] = [];
  for (const precision of precisions) encoders.push(await runChild(await ensureModel(precision)));
  const report = {
    machine: {
      cpus: os.cpus()[0]?.model ?? "unknown",
      availableParallelism: os.availableParallelism(),
      totalMemGiB: Math.round(os.totalmem() / 2 ** 30),
      // Other processes on a small shared machine slow every number here; this says how busy it was.
      loadAverage1m: { atStart: loadAtStart, atEnd: Math.round(os.loadavg()[0] * 100) / 100 },
    },
    model:
      "Alpha-CLIP ViT-L/14@336, random weights (24 blocks, width 1024; outputs llava_features + image_embed)",
    preprocessing,
    encoders,
  };
  process.stdout.write(`${JSON.stringify(report, null, 2)}\n\n`);
  const lines = [
    `Preprocessing (decode ${preprocessing.decodeMs} ms + mask ${preprocessing.maskDecodeMs} ms + LLaVA preprocess ${preprocessing.preprocessMs} ms): **${preprocessing.totalMsPerImage} ms/image**`,
    "",
    "| weights | provider | threads | batch | model size | load ms | first run ms | encoder ms/image (median) | peak RSS MiB |",
    "|---|---|---|---|---|---|---|---|---|",
    ...encoders.map(
      (e) =>
        `| ${e.precision} | ${e.provider} | ${e.threads} | ${e.batch} | ${(e.modelBytes / 2 ** 20).toFixed(0)} MiB | ${e.loadMs} | ${e.firstRunMs} | ${e.encoderMsPerImage} | ${e.peakRssMiB} |`,
    ),
  ];
  process.stdout.write(`${lines.join("\n")}\n`);
}

if (process.argv.includes("--child")) await child();
else await parent();
