/**
 * Full-size synthetic models (random weights, real shapes) for benchmarks, made on demand into a cache
 * folder and never committed:
 *   - Alpha-CLIP ViT-L/14@336: bench/vision.ts owns its generator and writes it into
 *     $TMPDIR/region-vqa-bench; when it is missing we run that script once (fp32 only), which writes
 *     the folder and measures it,
 *   - a LLaVA-1.5 mmproj 1024 -> 4096 -> 4096 (F16), via the projector's `writeMmprojGguf`,
 *   - a LLaMA-7B-shaped GGUF with few layers (n_embd 4096, ffn 11008, 32 heads, vocab 32000 from the
 *     golden SentencePiece vocabulary, F16, untied LM head), via the LLM's `randomLlamaWeights` and
 *     `writeLlamaGguf`. Those take whole Float32Arrays, so generation holds ~2.7 GB (2 layers) for a
 *     few seconds; it runs in a child process so that the memory is returned before benchmarking.
 */
import { spawn } from "node:child_process";
import { existsSync, mkdirSync } from "node:fs";
import { rename } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { randomLlamaWeights, readLlamaVocabulary, seededRandom, writeLlamaGguf } from "../src/llm/index.js";
import { writeMmprojGguf } from "../src/projector/index.js";

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const vocabPath = path.resolve(repoRoot, "test/fixtures/golden/ggml-vocab-llama-spm.gguf");

/** Where generated benchmark models go: REGION_VQA_BENCH_DIR, else ~/.cache/region-vqa/bench. */
export function benchModelsDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.REGION_VQA_BENCH_DIR) return path.resolve(env.REGION_VQA_BENCH_DIR);
  const cache = env.XDG_CACHE_HOME || path.join(os.homedir(), ".cache");
  return path.join(cache, "region-vqa", "bench");
}

/** LLaVA-1.5-7B's language model shape (LLaMA-2-7B / Vicuna-7B), with `layers` of its 32 blocks. */
export const LLAMA_7B_SHAPE = {
  vocabSize: 32000,
  embeddingLength: 4096,
  feedForwardLength: 11008,
  headCount: 32,
} as const;

/** LLaVA-1.5's projector: ViT-L features (1024) -> 4096 -> 4096. */
export const LLAVA_MMPROJ_SHAPE = { inWidth: 1024, hiddenWidth: 4096, outWidth: 4096 } as const;

export interface SyntheticModels {
  vision: string;
  projector: string;
  llm: string;
  description: string;
}

function log(message: string): void {
  process.stderr.write(`bench: ${message}\n`);
}

/** Runs a TypeScript file under tsx in a child process; resolves with its stdout. */
export function runTsChild(
  file: string,
  args: string[],
  env: NodeJS.ProcessEnv = process.env,
): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", file, ...args], {
      cwd: repoRoot,
      env,
      stdio: ["ignore", "pipe", "inherit"],
    });
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.on("error", reject);
    child.on("exit", (code, signal) => {
      if (code === 0) resolve(out);
      else reject(new Error(`${path.relative(repoRoot, file)} exited with ${code ?? signal}`));
    });
  });
}

/** The random ViT-L/14@336 folder of bench/vision.ts, written by running that script when missing. */
export async function fullSizeVisionModel(threads: number): Promise<string> {
  const dir = path.join(os.tmpdir(), "region-vqa-bench", "alpha-clip-vit-l14-336-random-fp32");
  if (!existsSync(path.join(dir, "manifest.json"))) {
    log(`no ${dir}; running bench/vision.ts once (fp32) to write it`);
    await runTsChild(path.join(repoRoot, "bench", "vision.ts"), [
      "--precisions",
      "fp32",
      "--runs",
      "1",
      "--prep-iterations",
      "1",
      "--threads",
      String(threads),
    ]);
    if (!existsSync(path.join(dir, "manifest.json"))) {
      throw new Error(`bench/vision.ts did not write ${dir} (has its cache folder moved?)`);
    }
  }
  return dir;
}

export async function fullSizeMmproj(dir = benchModelsDir()): Promise<string> {
  const file = path.join(dir, "llava-mmproj-1024-4096-random-f16.gguf");
  if (existsSync(file)) return file;
  mkdirSync(dir, { recursive: true });
  log(`writing ${file}`);
  const rand = seededRandom(11);
  const { inWidth, hiddenWidth, outWidth } = LLAVA_MMPROJ_SHAPE;
  // Uniform with variance 1/fan-in, like PyTorch's default Linear init.
  const matrix = (rows: number, cols: number): Float32Array => {
    const m = new Float32Array(rows * cols);
    const gain = Math.sqrt(3 / cols);
    for (let i = 0; i < m.length; i++) m[i] = (rand() * 2 - 1) * gain;
    return m;
  };
  const tmp = `${file}.${process.pid}.tmp`;
  await writeMmprojGguf(
    tmp,
    {
      inWidth,
      hiddenWidth,
      outWidth,
      w0: matrix(hiddenWidth, inWidth),
      b0: new Float32Array(hiddenWidth),
      w2: matrix(outWidth, hiddenWidth),
      b2: new Float32Array(outWidth),
    },
    { precision: "f16", name: "llava-mmproj-random" },
  );
  await rename(tmp, file);
  return file;
}

function llamaFile(layers: number, dir: string): string {
  return path.join(dir, `llama-7b-shape-${layers}l-random-f16.gguf`);
}

/** Writes the LLaMA-7B-shaped GGUF (in this process; see `fullSizeLlama` for the child-process way). */
export async function writeFullSizeLlama(layers: number, dir = benchModelsDir()): Promise<string> {
  const file = llamaFile(layers, dir);
  mkdirSync(dir, { recursive: true });
  log(`writing ${file} (${layers} layers; holds ~${Math.round(layers * 0.8 + 1.1)} GB while generating)`);
  const started = performance.now();
  const weights = randomLlamaWeights({ ...LLAMA_7B_SHAPE, blockCount: layers, tied: false, seed: 7 });
  const tmp = `${file}.${process.pid}.tmp`;
  await writeLlamaGguf(
    tmp,
    weights,
    {
      name: `llama-7b-shape-${layers}l-random`,
      contextLength: 4096,
      embeddingLength: LLAMA_7B_SHAPE.embeddingLength,
      feedForwardLength: LLAMA_7B_SHAPE.feedForwardLength,
      headCount: LLAMA_7B_SHAPE.headCount,
      ropeLayout: "pairs",
      weightType: "F16",
    },
    await readLlamaVocabulary(vocabPath),
  );
  await rename(tmp, file);
  log(`written in ${((performance.now() - started) / 1000).toFixed(1)} s`);
  return file;
}

export async function fullSizeLlama(layers: number, dir = benchModelsDir()): Promise<string> {
  const file = llamaFile(layers, dir);
  if (existsSync(file)) return file;
  await runTsChild(fileURLToPath(import.meta.url), ["--write-llama", String(layers), dir]);
  if (!existsSync(file)) throw new Error(`the LLaMA writer did not produce ${file}`);
  return file;
}

/** All three full-size synthetic models, made where missing. */
export async function fullSizeModels(options: { layers: number; threads: number }): Promise<SyntheticModels> {
  const llm = await fullSizeLlama(options.layers);
  const projector = await fullSizeMmproj();
  const vision = await fullSizeVisionModel(options.threads);
  return {
    vision,
    projector,
    llm,
    description:
      `synthetic full-size: Alpha-CLIP ViT-L/14@336 fp32 + mmproj 1024->4096->4096 F16 + ` +
      `LLaMA-7B shape (n_embd 4096, ffn 11008, 32 heads, vocab 32000) with ${options.layers} of 32 layers, F16; random weights`,
  };
}

// Child-process entry: `tsx bench/synthetic-models.ts --write-llama <layers> <dir>`.
if (process.argv[1] === fileURLToPath(import.meta.url) && process.argv[2] === "--write-llama") {
  await writeFullSizeLlama(Number(process.argv[3]), process.argv[4]);
}
