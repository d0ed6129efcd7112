/** Catalogue overrides for pull tests: the real catalogue, with sizes and hashes of small fake files. */
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { expect } from "vitest";
import { RegionVqaError } from "../../src/common/errors.js";
import { DEFAULT_CATALOG, type Catalog } from "../../src/models/index.js";
import { sha256Of } from "./pull-fakehost.js";

export const HF_DIR = "/second-state/Llava-v1.5-7B-GGUF/resolve/main";
export const OPENXLAB_DIR = "/models/SunzeY/AlphaCLIP/weight";
export const MMPROJ = "llava-v1.5-7b-mmproj-model-f16.gguf";
export const LLM_Q4 = "llava-v1.5-7b-Q4_K_M.gguf";
export const LLM_Q8 = "llava-v1.5-7b-Q8_0.gguf";
export const CKPT_20M = "clip_l14_336_grit_20m_4xe.pth";
/** Where sam2.1-tiny's graphs are published (the preset's segmenter), at the pinned revision. */
export const SAM21_DIR =
  "/onnx-community/sam2.1-hiera-tiny-ONNX/resolve/814a066640debee5a91e70aa401fb8e17e030503/onnx";
/** The files of sam2.1-tiny's default (fp32) variant. */
export const SAM21_FP32_FILES = [
  "prompt_encoder_mask_decoder.onnx",
  "prompt_encoder_mask_decoder.onnx_data",
  "vision_encoder.onnx",
  "vision_encoder.onnx_data",
];

/** Where OpenAI publishes ViT-L/14@336 (the URL names the file's sha256), and its Hugging Face repository. */
export const OPENAI_CLIP_DIR =
  "/clip/models/3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02";
export const OPENAI_CLIP_FILE = "ViT-L-14-336px.pt";
export const HF_CLIP_DIR = "/openai/clip-vit-large-patch14-336/resolve/main";

/**
 * DEFAULT_CATALOG with the given files' exact size and sha256 filled in (as if read from the
 * publisher), and optionally another head count for the conversions (the tiny models have 4).
 * Files are keyed by name, or by `<model>/<name>` where two models publish the same file name (the
 * segmenters' `vision_encoder.onnx`).
 *
 * Presets lose their CLIP text tower unless `presetText` is set: the tests written before the preset
 * named one serve no text checkpoint (pull-text.test.ts covers the preset with it).
 */
export function catalogWith(
  files: Record<string, Buffer>,
  options: { heads?: number; withSha?: boolean; presetText?: boolean } = {},
): Catalog {
  const catalog = structuredClone(DEFAULT_CATALOG) as Catalog;
  if (!options.presetText) for (const preset of catalog.presets) delete preset.text;
  for (const model of catalog.models) {
    if (options.heads && model.convert) model.convert.heads = options.heads;
    const all = [...(model.commonFiles ?? []), ...Object.values(model.variants).flatMap((v) => v.files)];
    for (const f of all) {
      const body = files[`${model.name}/${f.file}`] ?? files[f.file];
      if (!body) continue;
      f.bytes = body.length;
      if (options.withSha !== false) f.sha256 = sha256Of(body);
    }
  }
  return catalog;
}

const tempDirs: string[] = [];

/** A fresh models folder under the system temp folder, removed by `removeTempModelsDirs`. */
export async function tempModelsDir(): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "rvq-pull-"));
  tempDirs.push(dir);
  return dir;
}

export async function removeTempModelsDirs(): Promise<void> {
  for (const dir of tempDirs.splice(0)) await rm(dir, { recursive: true, force: true });
}

/** The RegionVqaError a promise rejects with (fails the test if it resolves or throws something else). */
export async function failure(promise: Promise<unknown>): Promise<RegionVqaError> {
  const outcome = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(outcome).toBeInstanceOf(RegionVqaError);
  return outcome as RegionVqaError;
}
