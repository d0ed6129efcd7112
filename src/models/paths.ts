import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

/**
 * Where models live. Pulled models go to one models folder (default `~/.cache/region-vqa/models`,
 * or `$XDG_CACHE_HOME/region-vqa/models`; `REGION_VQA_MODELS_DIR` or `--dir` override it). The
 * repository's own `models/` folder is searched as well, for models built or copied there by hand.
 *
 * Layout under a models folder:
 *   <model>/<variant>/manifest.json    a converted vision model (one folder per variant)
 *   <model>/manifest.json + *.gguf     a GGUF model: the projector and each pulled quantisation
 *   <preset>/preset.json               which of the above a preset name stands for
 *   .downloads/                        checkpoints waiting for conversion (and their .partial files)
 */
export const PRESET_FILE = "preset.json";
export const DOWNLOADS_FOLDER = ".downloads";
/** Suffix of a folder being converted into; renamed to the final name once its manifest is written. */
export const CONVERTING_SUFFIX = ".converting";

export function defaultModelsDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.REGION_VQA_MODELS_DIR) return path.resolve(env.REGION_VQA_MODELS_DIR);
  const cache = env.XDG_CACHE_HOME || path.join(os.homedir(), ".cache");
  return path.join(cache, "region-vqa", "models");
}

/** The repository's (or installed package's) `models/` folder; works from src/ and from dist/. */
export function repoModelsDir(): string {
  return fileURLToPath(new URL("../../models/", import.meta.url));
}

/** Folders searched for installed models, the pull target first, without duplicates. */
export function modelRoots(modelsDir?: string, env: NodeJS.ProcessEnv = process.env): string[] {
  const roots = [path.resolve(modelsDir ?? defaultModelsDir(env)), path.resolve(repoModelsDir())];
  return [...new Set(roots)];
}
