import { readFile, rename, stat, writeFile } from "node:fs/promises";
import path from "node:path";
import { RegionVqaError } from "./errors.js";

/**
 * Every model folder carries `manifest.json`. Loaders read it and never guess from file names.
 * `kind` says what the folder holds; `config` is kind-specific.
 */
export type ModelKind =
  | "alpha-clip-vision"
  | "llava-projector"
  | "alpha-clip-llava-fused"
  | "llm-gguf"
  | "sam-segmenter"
  | "clip-text";

export interface ManifestFile {
  /** Path relative to the folder. */
  path: string;
  bytes: number;
  sha256: string;
  role: string;
}

export interface ModelManifest<C = Record<string, unknown>> {
  kind: ModelKind;
  formatVersion: 1;
  name: string;
  createdAt: string;
  config: C;
  precision?: "fp32" | "fp16";
  files: ManifestFile[];
  source?: { path: string; sha256: string; bytes: number; format: string };
  [extra: string]: unknown;
}

export interface ManifestExpectation {
  /** The kinds a loader accepts. */
  kinds: readonly ModelKind[];
  /** How errors name the folder ("Vision model folder") and the model ("an Alpha-CLIP vision model"). */
  folder: string;
  model: string;
  /** `config` keys that must be positive integers. */
  positiveIntegers?: readonly string[];
  /** Require a file with role "onnx". */
  onnxFile?: boolean;
}

/**
 * Reads `dir/manifest.json` and checks what every loader checks: the folder exists (else
 * `model_not_found`), the manifest is JSON of an accepted kind, the named config values are positive
 * integers, and an ONNX file is listed (else `model_invalid`). Kind-specific checks stay with the loader.
 */
export async function readModelManifest<C>(
  dir: string,
  expect: ManifestExpectation,
): Promise<ModelManifest<C>> {
  const s = await stat(dir).catch(() => undefined);
  if (!s?.isDirectory()) {
    throw new RegionVqaError("model_not_found", `${expect.folder} not found: ${dir}`, { path: dir });
  }
  let manifest: ModelManifest<C>;
  try {
    manifest = JSON.parse(await readFile(path.join(dir, "manifest.json"), "utf8")) as ModelManifest<C>;
  } catch (err) {
    throw new RegionVqaError(
      "model_invalid",
      `${dir}/manifest.json is missing or not JSON: ${(err as Error).message}`,
    );
  }
  if (!expect.kinds.includes(manifest.kind)) {
    throw new RegionVqaError(
      "model_invalid",
      `${dir} holds a "${String(manifest.kind)}" model, not ${expect.model} (${expect.kinds.join(" or ")}).`,
    );
  }
  const c = manifest.config as Record<string, unknown> | undefined;
  for (const key of expect.positiveIntegers ?? []) {
    const v = c?.[key];
    if (typeof v !== "number" || !Number.isInteger(v) || v <= 0) {
      throw new RegionVqaError(
        "model_invalid",
        `${dir}/manifest.json: config.${key} must be a positive integer.`,
      );
    }
  }
  if (expect.onnxFile && !manifest.files?.some((f) => f.role === "onnx")) {
    throw new RegionVqaError("model_invalid", `${dir}/manifest.json lists no file with role "onnx".`);
  }
  return manifest;
}

/**
 * Writes JSON (a manifest, a preset file) so that readers never see half of it: to a temporary file
 * beside it, then renamed over the final name.
 */
export async function writeJsonAtomically(file: string, value: unknown): Promise<void> {
  const tmp = `${file}.${process.pid}.tmp`;
  await writeFile(tmp, `${JSON.stringify(value, null, 2)}\n`);
  await rename(tmp, file);
}

/** A model folder's files as its manifest lists them (names relative to the folder). */
export function manifestFiles(
  files: ReadonlyArray<{ path: string; role: string; bytes: number; sha256: string }>,
): ManifestFile[] {
  return files.map((f) => ({ path: path.basename(f.path), role: f.role, bytes: f.bytes, sha256: f.sha256 }));
}
