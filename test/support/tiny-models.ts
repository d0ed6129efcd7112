/**
 * Small real models for end-to-end tests, built on demand into a temp folder (never committed):
 * the golden tiny Alpha-CLIP checkpoint converted by our own converter, the golden tiny mmproj
 * (64 -> 96 -> 96), and a random LLaMA GGUF with n_embd 96 over the real LLaMA vocabulary. Random
 * weights answer nothing sensible: tests on these assert plumbing (shapes, caching, streaming), not
 * correctness; the bundled shapes model is for correct answers.
 */
import { existsSync, mkdirSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { randomLlamaWeights, readLlamaVocabulary, writeLlamaGguf } from "../../src/llm/index.js";
import { convertVisionCheckpoint } from "../../src/vision/convert/index.js";

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
/** Golden data made by the reference implementations (see its README). */
export const goldenDir = path.join(repoRoot, "test/fixtures/golden");
export const goldenAlphaClip = path.join(goldenDir, "alpha-clip-tiny");

export interface TinyModels {
  vision: string;
  projector: string;
  llm: string;
}

const cacheDir = path.join(os.tmpdir(), "region-vqa-tiny-models-v1");
let pending: Promise<TinyModels> | undefined;

async function build(): Promise<TinyModels> {
  mkdirSync(cacheDir, { recursive: true });
  const vision = path.join(cacheDir, "tiny-vision");
  if (!existsSync(path.join(vision, "manifest.json"))) {
    await convertVisionCheckpoint({
      checkpoint: path.join(goldenAlphaClip, "tiny_alphaclip_visual.pth"),
      out: vision,
      heads: 4,
      precision: "fp32",
    });
  }
  const llm = path.join(cacheDir, "tiny-llm-96.gguf");
  if (!existsSync(llm)) {
    const shape = {
      vocabSize: 32000,
      embeddingLength: 96,
      feedForwardLength: 192,
      headCount: 4,
      blockCount: 2,
      tied: true,
      seed: 7,
    };
    const vocab = await readLlamaVocabulary(path.join(goldenDir, "ggml-vocab-llama-spm.gguf"));
    const tmp = `${llm}.${process.pid}.tmp`;
    await writeLlamaGguf(
      tmp,
      randomLlamaWeights(shape),
      {
        name: "tiny-llm-96",
        contextLength: 2048,
        embeddingLength: 96,
        feedForwardLength: 192,
        headCount: 4,
        ropeLayout: "pairs",
      },
      vocab,
    );
    const { rename } = await import("node:fs/promises");
    await rename(tmp, llm);
  }
  return {
    vision,
    projector: path.join(goldenDir, "llava-projector-tiny", "tiny-mmproj-f16.gguf"),
    llm,
  };
}

/** Builds (once per process, cached on disk across runs) and returns the tiny model paths. */
export function tinyModels(): Promise<TinyModels> {
  pending ??= build();
  return pending;
}
