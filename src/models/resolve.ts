import { readdir, stat } from "node:fs/promises";
import path from "node:path";
import { RegionVqaError } from "../common/errors.js";
import {
  DEFAULT_CATALOG,
  findCatalogModel,
  findCatalogPreset,
  findVariantKey,
  type Catalog,
  type CatalogModel,
  type CatalogPreset,
} from "./catalog.js";
import {
  checkModelFolder,
  checkPreset,
  presetPaths,
  readManifest,
  readPresetFile,
  type PresetPaths,
} from "./installed.js";
import { modelRoots } from "./paths.js";

export interface ResolvedModelPreset extends PresetPaths {
  /** The preset name, or the folder given. */
  name: string;
  /** How it was found: a preset folder written by pull, catalogue defaults, or a scanned folder. */
  source: "preset-file" | "catalog" | "folder";
}

export interface ResolveOptions {
  /** Pull target (default: REGION_VQA_MODELS_DIR or ~/.cache/region-vqa/models). */
  modelsDir?: string;
  /** Folders to search instead of the pull target plus the repository's models/. */
  roots?: string[];
  /** Pick these instead of what the preset was pulled with. */
  quant?: string;
  variant?: string;
  catalog?: Catalog;
  env?: NodeJS.ProcessEnv;
}

/**
 * A model preset name (`alpha-llava-7b`) or a folder -> the three parts the pipeline loads:
 * the Alpha-CLIP ONNX folder, the LLaVA projector (an mmproj GGUF file, or a folder whose manifest
 * kind is `llava-projector`) and the LLM GGUF file; plus, in `segmenterDir`, the segmenter folder
 * (manifest kind `sam-segmenter`) and, in `textDir`, the CLIP text tower folder (kind `clip-text`) when
 * they are installed for it. Everything returned exists and matches its manifest; otherwise a
 * `model_not_found` / `model_invalid` error says what to pull.
 *
 * The segmenter and the text tower are optional: a preset pulled before it named them, or pulled with
 * `--no-segmenter` / `--no-text`, resolves without them. One that `preset.json` records must be
 * complete, though.
 *
 * A folder is read as: a preset folder (`preset.json`), or a folder holding the parts' model folders
 * (each with a manifest.json, up to two levels down), e.g. a models folder with one model of each kind.
 */
export async function resolveModelPreset(nameOrDir: string, options: ResolveOptions = {}): Promise<ResolvedModelPreset> {
  const catalog = options.catalog ?? DEFAULT_CATALOG;
  const looksLikePath = nameOrDir.includes("/") || nameOrDir.includes(path.sep) || nameOrDir.startsWith(".");
  const dirStat = await stat(nameOrDir).catch(() => undefined);
  if (dirStat?.isDirectory() && (looksLikePath || !findCatalogPreset(catalog, nameOrDir))) {
    return resolveFolder(path.resolve(nameOrDir), options);
  }
  const preset = findCatalogPreset(catalog, nameOrDir);
  if (!preset) {
    if (looksLikePath) throw new RegionVqaError("model_not_found", `model folder ${nameOrDir} does not exist`);
    const known = catalog.presets.map((p) => p.name).join(", ");
    throw new RegionVqaError(
      "model_not_found",
      `unknown model "${nameOrDir}": give a preset name (${known}) or a model folder`,
    );
  }
  const roots = options.roots ?? modelRoots(options.modelsDir, options.env);
  const problems: string[] = [];
  for (const root of roots) {
    const found = await resolveInRoot(root, preset, catalog, options, problems);
    if (found) return found;
  }
  const detail = problems.length ? `: ${problems.join("; ")}` : "";
  const command = [
    `region-vqa pull ${preset.name}`,
    options.quant ? ` --quant ${options.quant}` : "",
    options.variant ? ` --variant ${options.variant}` : "",
  ].join("");
  throw new RegionVqaError(
    problems.length ? "model_invalid" : "model_not_found",
    `model "${preset.name}" is not installed completely (looked in ${roots.join(", ")})${detail}. Run \`${command}\``,
    { roots, problems },
  );
}

async function resolveInRoot(
  root: string,
  preset: CatalogPreset,
  catalog: Catalog,
  options: ResolveOptions,
  problems: string[],
): Promise<ResolvedModelPreset | undefined> {
  // What pull recorded, unless the caller asks for another variant or quantisation.
  const presetDir = path.join(root, preset.name);
  const recorded = await readPresetFile(presetDir);
  if (recorded && !options.quant && !options.variant) {
    const paths = presetPaths(presetDir, recorded);
    const check = await checkPreset(paths);
    if (check.complete) {
      // A preset.json from before the preset named a segmenter / text tower: use one pulled on its own since.
      const segmenterDir = paths.segmenterDir ?? (await installedSegmenterIn(root, preset, catalog));
      const textDir = paths.textDir ?? (await installedTextIn(root, preset, catalog));
      return {
        name: preset.name,
        source: "preset-file",
        ...paths,
        ...(segmenterDir ? { segmenterDir } : {}),
        ...(textDir ? { textDir } : {}),
      };
    }
    problems.push(...check.problems.map((p) => `${presetDir}: ${p}`));
    return undefined;
  }
  const paths = await catalogPartsIn(root, preset, catalog, options);
  if (!paths) return undefined;
  const check = await checkPreset(paths);
  if (check.complete) return { name: preset.name, source: "catalog", ...paths };
  problems.push(...check.problems);
  return undefined;
}

/** The catalogue layout under one root, or undefined when nothing of the preset is there. */
export async function catalogPartsIn(
  root: string,
  preset: CatalogPreset,
  catalog: Catalog,
  choice: { quant?: string; variant?: string },
): Promise<PresetPaths | undefined> {
  const visionModel = requireModel(catalog, preset.vision.model);
  const llmModel = requireModel(catalog, preset.llm.model);
  const visionVariant = pickVariant(visionModel, choice.variant ?? preset.vision.variant);
  const llmDir = path.join(root, llmModel.name);
  const visionDir = path.join(root, visionModel.name, visionVariant);
  const manifest = await readManifest(llmDir).catch(() => undefined);
  const visionThere = await stat(visionDir).catch(() => undefined);
  if (!manifest && !visionThere) return undefined;
  const projector = llmModel.commonFiles?.find((f) => f.role === "projector");
  let llmVariant = choice.quant ?? preset.llm.variant;
  if (!llmVariant) {
    // Prefer the default quantisation, else any one that was pulled.
    const installed = new Set(manifest?.files?.map((f) => f.path) ?? []);
    const keys = [llmModel.defaultVariant, ...Object.keys(llmModel.variants)];
    llmVariant = keys.find((k) => llmModel.variants[k].files.every((f) => installed.has(f.file))) ?? llmModel.defaultVariant;
  }
  const llmFile = llmModel.variants[pickVariant(llmModel, llmVariant)].files.find((f) => f.role === "llm");
  if (!projector || !llmFile) {
    throw new RegionVqaError("model_invalid", `catalogue entry ${llmModel.name} lacks a projector or LLM file`);
  }
  const segmenterDir = await installedSegmenterIn(root, preset, catalog);
  const textDir = await installedTextIn(root, preset, catalog);
  return {
    visionDir,
    projectorPath: path.join(llmDir, projector.file),
    llmPath: path.join(llmDir, llmFile.file),
    ...(segmenterDir ? { segmenterDir } : {}),
    ...(textDir ? { textDir } : {}),
  };
}

/**
 * The preset's segmenter under one root: the folder of its variant (the preset's, else the default) when
 * complete, else any other complete variant's; undefined when none is installed.
 */
export async function installedSegmenterIn(
  root: string,
  preset: CatalogPreset,
  catalog: Catalog,
): Promise<string | undefined> {
  return preset.segmenter ? installedVariantIn(root, catalog, preset.segmenter, "sam-segmenter") : undefined;
}

/** The preset's CLIP text tower under one root, found like its segmenter (`installedSegmenterIn`). */
export async function installedTextIn(
  root: string,
  preset: CatalogPreset,
  catalog: Catalog,
): Promise<string | undefined> {
  return preset.text ? installedVariantIn(root, catalog, preset.text, "clip-text") : undefined;
}

async function installedVariantIn(
  root: string,
  catalog: Catalog,
  part: { model: string; variant?: string },
  kind: "sam-segmenter" | "clip-text",
): Promise<string | undefined> {
  const model = requireModel(catalog, part.model);
  const first = pickVariant(model, part.variant);
  for (const variant of [first, ...Object.keys(model.variants).filter((v) => v !== first)]) {
    const dir = path.join(root, model.name, variant);
    const check = await checkModelFolder(dir);
    if (check.complete && check.manifest?.kind === kind) return dir;
  }
  return undefined;
}

export function requireModel(catalog: Catalog, name: string): CatalogModel {
  const model = findCatalogModel(catalog, name);
  if (!model) throw new RegionVqaError("model_not_found", `the catalogue has no model "${name}"`);
  return model;
}

export function pickVariant(model: CatalogModel, wanted: string | undefined): string {
  if (wanted === undefined) return model.defaultVariant;
  const key = findVariantKey(model, wanted);
  if (!key) {
    const flag = model.variantFlag === "quant" ? "--quant" : "--variant";
    throw new RegionVqaError(
      "model_not_found",
      `${model.name} has no ${flag} "${wanted}"; known: ${Object.keys(model.variants).join(", ")}`,
    );
  }
  return key;
}

/** A preset folder, or a folder holding one complete model folder of each needed kind. */
async function resolveFolder(dir: string, options: ResolveOptions): Promise<ResolvedModelPreset> {
  const recorded = await readPresetFile(dir);
  if (recorded) {
    const paths = presetPaths(dir, recorded);
    const check = await checkPreset(paths);
    if (!check.complete) {
      throw new RegionVqaError("model_invalid", `${dir} is incomplete: ${check.problems.join("; ")}`);
    }
    return { name: dir, source: "preset-file", ...paths };
  }
  let visionDir: string | undefined;
  let projectorPath: string | undefined;
  let llmPath: string | undefined;
  let segmenterDir: string | undefined;
  let textDir: string | undefined;
  const wantedQuant = options.quant?.toLowerCase();
  for (const folder of await foldersWithManifest(dir, 2)) {
    const check = await checkModelFolder(folder);
    const m = check.manifest;
    if (!m || !check.complete) continue;
    if (m.kind === "alpha-clip-vision") visionDir ??= folder;
    else if (m.kind === "sam-segmenter") segmenterDir ??= folder;
    else if (m.kind === "clip-text") textDir ??= folder;
    else if (m.kind === "llava-projector") projectorPath ??= folder;
    else if (m.kind === "llm-gguf") {
      const projector = m.files.find((f) => f.role === "projector");
      const llms = m.files.filter((f) => f.role === "llm");
      const llm = (wantedQuant && llms.find((f) => f.path.toLowerCase().includes(wantedQuant))) || llms[0];
      if (projector) projectorPath ??= path.join(folder, projector.path);
      if (llm) llmPath ??= path.join(folder, llm.path);
    }
  }
  const missing = [
    visionDir ? undefined : "an Alpha-CLIP vision folder (manifest kind alpha-clip-vision)",
    projectorPath ? undefined : "a projector (mmproj GGUF in an llm-gguf folder, or a llava-projector folder)",
    llmPath ? undefined : "an LLM GGUF file (manifest kind llm-gguf)",
  ].filter(Boolean);
  if (missing.length) {
    throw new RegionVqaError("model_not_found", `${dir} lacks ${missing.join(", ")} with a complete manifest.json`);
  }
  return {
    name: dir,
    source: "folder",
    visionDir: visionDir!,
    projectorPath: projectorPath!,
    llmPath: llmPath!,
    ...(segmenterDir ? { segmenterDir } : {}),
    ...(textDir ? { textDir } : {}),
  };
}

async function foldersWithManifest(dir: string, depth: number): Promise<string[]> {
  const found: string[] = [];
  const items = await readdir(dir, { withFileTypes: true }).catch(() => []);
  if (items.some((d) => d.isFile() && d.name === "manifest.json")) found.push(dir);
  if (depth > 0) {
    for (const d of items.sort((a, b) => a.name.localeCompare(b.name))) {
      if (d.isDirectory() && !d.name.startsWith(".")) found.push(...(await foldersWithManifest(path.join(dir, d.name), depth - 1)));
    }
  }
  return found;
}
