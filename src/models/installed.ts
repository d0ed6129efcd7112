import type { Dirent } from "node:fs";
import { readdir, readFile, stat } from "node:fs/promises";
import path from "node:path";
import { RegionVqaError } from "../common/errors.js";
import type { ModelKind, ModelManifest } from "../common/manifest.js";
import { DEFAULT_CATALOG, findCatalogModel } from "./catalog.js";
import { hashFile } from "./download.js";
import { CONVERTING_SUFFIX, DOWNLOADS_FOLDER, modelRoots, PRESET_FILE } from "./paths.js";

/** What `region-vqa models` shows for one thing found under a models folder. */
export interface InstalledEntry {
  root: string;
  /** Path relative to the root, with `/`. */
  name: string;
  path: string;
  kind: ModelKind | "preset" | "partial-download" | "corrupt-file" | "unknown";
  bytes: number;
  complete: boolean;
  /** Why it is not complete (empty when complete). */
  problems: string[];
  /** The catalogue variant or quantisations, when the folder records them. */
  detail?: string;
  /** The licence of the weights: from the manifest, else from the catalogue entry it was pulled from. */
  licence?: string;
}

export interface FolderCheck {
  complete: boolean;
  problems: string[];
  bytes: number;
  manifest?: ModelManifest;
}

/**
 * Recorded by `pull` in preset folders: relative paths (from the preset folder) to the three parts, and
 * to the segmenter and text tower folders when the preset has them.
 */
export interface PresetFile {
  kind: "preset";
  formatVersion: 1;
  name: string;
  vision: string;
  projector: string;
  llm: string;
  segmenter?: string;
  /** CLIP text tower folder (kind `clip-text`) for zero-shot classification and text embeddings. */
  text?: string;
  /** The catalogue variant of the text tower, when `pull` recorded it. */
  textVariant?: string;
  createdAt: string;
  [extra: string]: unknown;
}

export interface PresetPaths {
  visionDir: string;
  projectorPath: string;
  llmPath: string;
  /** Segmenter folder (manifest kind `sam-segmenter`), when the preset has one installed. */
  segmenterDir?: string;
  /** CLIP text tower folder (manifest kind `clip-text`), when the preset has one. */
  textDir?: string;
}

export async function readManifest(dir: string): Promise<ModelManifest | undefined> {
  let text: string;
  try {
    text = await readFile(path.join(dir, "manifest.json"), "utf8");
  } catch {
    return undefined;
  }
  try {
    return JSON.parse(text) as ModelManifest;
  } catch {
    throw new RegionVqaError("model_invalid", `${path.join(dir, "manifest.json")} is not valid JSON`);
  }
}

/**
 * A model folder is complete when its manifest is there and every file it lists has the listed size
 * (and, with `verifyHashes`, the listed sha256). Sizes are cheap to check; hashes read every byte.
 */
export async function checkModelFolder(dir: string, options: { verifyHashes?: boolean } = {}): Promise<FolderCheck> {
  const problems: string[] = [];
  let manifest: ModelManifest | undefined;
  try {
    manifest = await readManifest(dir);
  } catch (err) {
    return { complete: false, problems: [(err as Error).message], bytes: await folderBytes(dir) };
  }
  if (!manifest) {
    return {
      complete: false,
      problems: ["no manifest.json: the download or conversion did not finish (run `region-vqa pull` again)"],
      bytes: await folderBytes(dir),
    };
  }
  if (!Array.isArray(manifest.files)) {
    return { complete: false, problems: ["manifest.json lists no files"], bytes: 0, manifest };
  }
  let bytes = 0;
  for (const f of manifest.files) {
    const st = await stat(path.join(dir, f.path)).catch(() => undefined);
    if (!st) {
      problems.push(`${f.path} is missing`);
      continue;
    }
    bytes += st.size;
    if (st.size !== f.bytes) {
      problems.push(`${f.path} has ${st.size} bytes, the manifest says ${f.bytes}`);
      continue;
    }
    if (options.verifyHashes && f.sha256) {
      const actual = await hashFile(path.join(dir, f.path), st.size);
      if (actual !== f.sha256) problems.push(`${f.path} sha256 ${actual} differs from the manifest's ${f.sha256}`);
    }
  }
  if (path.basename(dir).endsWith(CONVERTING_SUFFIX)) {
    problems.push("an interrupted conversion (run `region-vqa pull` again)");
  }
  return { complete: problems.length === 0, problems, bytes, manifest };
}

export async function readPresetFile(dir: string): Promise<PresetFile | undefined> {
  try {
    const parsed = JSON.parse(await readFile(path.join(dir, PRESET_FILE), "utf8")) as PresetFile;
    return parsed.kind === "preset" ? parsed : undefined;
  } catch {
    return undefined;
  }
}

export function presetPaths(dir: string, preset: PresetFile): PresetPaths {
  return {
    visionDir: path.resolve(dir, preset.vision),
    projectorPath: path.resolve(dir, preset.projector),
    llmPath: path.resolve(dir, preset.llm),
    ...(typeof preset.segmenter === "string" ? { segmenterDir: path.resolve(dir, preset.segmenter) } : {}),
    ...(typeof preset.text === "string" ? { textDir: path.resolve(dir, preset.text) } : {}),
  };
}

/** Checks that a file sits in a complete model folder that lists it. */
async function checkListedFile(file: string): Promise<FolderCheck> {
  const dir = path.dirname(file);
  if (!(await stat(file).catch(() => undefined))) {
    return { complete: false, problems: [`${file} is missing`], bytes: 0 };
  }
  const check = await checkModelFolder(dir);
  const listed = check.manifest?.files?.some((f) => path.resolve(dir, f.path) === path.resolve(file));
  if (check.manifest && !listed) {
    const problem = `${path.basename(file)} is not in ${dir}/manifest.json`;
    return { ...check, complete: false, problems: [...check.problems, problem] };
  }
  return check;
}

/** The parts a preset folder names (three, plus a segmenter and a text tower when it has them), each checked. */
export async function checkPreset(paths: PresetPaths): Promise<FolderCheck> {
  const segmenter = paths.segmenterDir ? await checkModelFolder(paths.segmenterDir) : undefined;
  const text = paths.textDir ? await checkModelFolder(paths.textDir) : undefined;
  const parts: Array<readonly [string, FolderCheck]> = [
    ["vision", await checkModelFolder(paths.visionDir)],
    ["projector", await checkListedFile(paths.projectorPath)],
    ["llm", await checkListedFile(paths.llmPath)],
    ...(segmenter ? [["segmenter", segmenter] as const] : []),
    ...(text ? [["text", text] as const] : []),
  ];
  const problems = parts.flatMap(([name, c]) => c.problems.map((p) => `${name}: ${p}`));
  if (segmenter?.manifest && segmenter.manifest.kind !== "sam-segmenter") {
    problems.push(`segmenter: ${paths.segmenterDir} holds a "${segmenter.manifest.kind}" model, not a sam-segmenter`);
  }
  if (text?.manifest && text.manifest.kind !== "clip-text") {
    problems.push(`text: ${paths.textDir} holds a "${text.manifest.kind}" model, not a clip-text`);
  }
  const sizes = await Promise.all(
    [paths.projectorPath, paths.llmPath].map((f) => stat(f).then((s) => s.size).catch(() => 0)),
  );
  const bytes = parts[0][1].bytes + sizes[0] + sizes[1] + (segmenter?.bytes ?? 0) + (text?.bytes ?? 0);
  return { complete: problems.length === 0, problems: [...new Set(problems)], bytes };
}

export interface ListOptions {
  /** Pull target (default: REGION_VQA_MODELS_DIR or ~/.cache/region-vqa/models). */
  modelsDir?: string;
  /** Folders to search instead of the pull target plus the repository's models/. */
  roots?: string[];
  verifyHashes?: boolean;
  env?: NodeJS.ProcessEnv;
}

/** Everything found under the models folders: models, presets, partial downloads, leftovers. */
export async function listInstalledModels(options: ListOptions = {}): Promise<InstalledEntry[]> {
  const roots = options.roots ?? modelRoots(options.modelsDir, options.env);
  const entries: InstalledEntry[] = [];
  for (const root of roots) await walk(root, root, 0, options, entries);
  return entries;
}

const MAX_DEPTH = 3;

async function walk(root: string, dir: string, depth: number, options: ListOptions, out: InstalledEntry[]) {
  let items: Dirent[];
  try {
    items = await readdir(dir, { withFileTypes: true });
  } catch {
    return;
  }
  const rel = (p: string) => path.relative(root, p).split(path.sep).join("/") || ".";
  const names = new Set(items.map((d) => d.name));
  const base = { root } as const;

  // Partial downloads and files kept aside sit beside the finished files of any folder.
  for (const d of items) {
    if (!d.isFile()) continue;
    const full = path.join(dir, d.name);
    if (d.name.endsWith(".partial")) {
      const size = (await stat(full).catch(() => undefined))?.size ?? 0;
      const sidecar = await readFile(`${full}.json`, "utf8")
        .then((t) => JSON.parse(t) as { totalBytes?: number })
        .catch(() => undefined);
      const of = sidecar?.totalBytes ? ` of ${sidecar.totalBytes}` : "";
      out.push({
        ...base,
        name: rel(full),
        path: full,
        kind: "partial-download",
        bytes: size,
        complete: false,
        problems: [`partial download (${size}${of} bytes): run \`region-vqa pull\` again to resume`],
      });
    } else if (d.name.endsWith(".corrupt")) {
      const size = (await stat(full).catch(() => undefined))?.size ?? 0;
      out.push({
        ...base,
        name: rel(full),
        path: full,
        kind: "corrupt-file",
        bytes: size,
        complete: false,
        problems: ["failed its checksum and was kept aside; not used (safe to delete)"],
      });
    }
  }

  if (names.has("manifest.json")) {
    const check = await checkModelFolder(dir, { verifyHashes: options.verifyHashes });
    const m = check.manifest;
    out.push({
      ...base,
      name: rel(dir),
      path: dir,
      kind: (m?.kind as ModelKind | undefined) ?? "unknown",
      bytes: check.bytes,
      complete: check.complete,
      problems: check.problems,
      detail: describeManifest(m),
      licence: licenceOf(m),
    });
    return;
  }
  if (names.has(PRESET_FILE)) {
    const preset = await readPresetFile(dir);
    if (preset) {
      const check = await checkPreset(presetPaths(dir, preset));
      out.push({
        ...base,
        name: rel(dir),
        path: dir,
        kind: "preset",
        bytes: check.bytes,
        complete: check.complete,
        problems: check.problems,
        detail: [
          path.basename(preset.vision),
          path.basename(preset.llm),
          // A segmenter folder is <model>/<variant>: its last part alone would only say "fp32".
          ...(typeof preset.segmenter === "string" ? [preset.segmenter.split(/[\\/]/).slice(-2).join("/")] : []),
          ...(typeof preset.text === "string" ? [preset.text.split(/[\\/]/).slice(-2).join("/")] : []),
        ].join(" + "),
      });
      return;
    }
  }

  const isModelFile = (n: string) =>
    !n.startsWith(".") && !/\.(partial|partial\.json|lock|corrupt)$/.test(n) && n !== "README.md";
  const looseFiles = items.filter((d) => d.isFile() && isModelFile(d.name));
  if (looseFiles.length > 0 && depth > 0 && path.basename(dir) !== DOWNLOADS_FOLDER) {
    const check = await checkModelFolder(dir);
    out.push({ ...base, name: rel(dir), path: dir, kind: "unknown", bytes: check.bytes, complete: false, problems: check.problems });
  }
  if (depth >= MAX_DEPTH) return;
  for (const d of items) {
    if (!d.isDirectory() || d.name === "node_modules") continue;
    if (d.name.startsWith(".") && d.name !== DOWNLOADS_FOLDER) continue;
    await walk(root, path.join(dir, d.name), depth + 1, options, out);
  }
}

function describeManifest(m: ModelManifest | undefined): string | undefined {
  if (!m) return undefined;
  const origin = m.origin as { variant?: string; variants?: string[] } | undefined;
  if (origin?.variants?.length) return origin.variants.join(", ");
  return [origin?.variant, m.precision].filter(Boolean).join(", ") || undefined;
}

/** A manifest's own `licence`, else that of the catalogue model it records as its origin. */
function licenceOf(m: ModelManifest | undefined): string | undefined {
  if (!m) return undefined;
  if (typeof m.licence === "string") return m.licence;
  const origin = m.origin as { catalog?: unknown } | undefined;
  return typeof origin?.catalog === "string" ? findCatalogModel(DEFAULT_CATALOG, origin.catalog)?.licence : undefined;
}

async function folderBytes(dir: string): Promise<number> {
  let total = 0;
  const items = await readdir(dir, { withFileTypes: true }).catch(() => [] as Dirent[]);
  for (const d of items) {
    const full = path.join(dir, d.name);
    if (d.isFile()) total += (await stat(full).catch(() => undefined))?.size ?? 0;
    else if (d.isDirectory()) total += await folderBytes(full);
  }
  return total;
}
