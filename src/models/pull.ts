import { mkdir, rename, rm, stat, statfs, unlink } from "node:fs/promises";
import path from "node:path";
import { RegionVqaError } from "../common/errors.js";
import { writeJsonAtomically, type ManifestFile, type ModelManifest } from "../common/manifest.js";
import type { SegmenterConfig } from "../segmenter/types.js";
import {
  DEFAULT_CATALOG,
  findCatalogModel,
  knownSize,
  findCatalogPreset,
  variantFiles,
  type Catalog,
  type CatalogFile,
  type CatalogModel,
  type HostId,
} from "./catalog.js";
import type { StateDict } from "../vision/checkpoint/index.js";
import {
  downloadFile,
  formatBytes,
  hashFile,
  partialPathFor,
  takeLock,
  type DownloadProgress,
  type DownloadResult,
} from "./download.js";
import { fileUrl, hostConfigFromEnv, type HostConfig } from "./hosts.js";
import {
  checkModelFolder,
  checkPreset,
  presetPaths,
  readManifest,
  readPresetFile,
  type PresetFile,
} from "./installed.js";
import { CONVERTING_SUFFIX, defaultModelsDir, DOWNLOADS_FOLDER, PRESET_FILE } from "./paths.js";
import { describeFetched, fetchTensorRanges, withFetchedTensorsOnly } from "./range-fetch.js";
import { pickVariant, requireModel, type ResolvedModelPreset } from "./resolve.js";
import { clipTextTensorKeys } from "./text-tower.js";

/** Turns a vision checkpoint into an ONNX model folder with its manifest (src/vision/convert). */
export type VisionConverter = (args: {
  checkpoint: string;
  out: string;
  heads?: number;
  precision: "fp32" | "fp16";
  logger?: { info(message: string): void; warn(message: string): void };
}) => Promise<ModelManifest>;

/**
 * Turns a CLIP checkpoint's text tower into an ONNX model folder with its manifest (kind `clip-text`,
 * `convertTextCheckpoint` in src/text/convert.ts). `view` wraps the opened checkpoint (a ranged download
 * refuses tensors it did not fetch); `source: false` records no source file (the working file of a
 * ranged download is not the published checkpoint).
 */
export type TextConverter = (args: {
  checkpoint: string;
  out: string;
  heads?: number;
  precision: "fp32" | "fp16";
  logger?: { info(message: string): void; warn(message: string): void };
  view?: (opened: StateDict) => StateDict;
  source?: false;
}) => Promise<ModelManifest>;

/** Suffix of the sparse working file a ranged text-tower download writes into (in `.downloads/`). */
export const TEXT_RANGES_SUFFIX = ".text-ranges";

export interface PullOptions {
  /** Where models go (default: REGION_VQA_MODELS_DIR or ~/.cache/region-vqa/models). */
  modelsDir?: string;
  /** LLM quantisation (`Q4_K_M`, `Q5_K_M`, ...). */
  quant?: string;
  /**
   * Variant of the model pulled (`grit-1m`, or for a segmenter `fp16`, `quantized`, ...); for a preset,
   * the vision checkpoint's.
   */
  variant?: string;
  /** For a preset: the segmenter's variant (default: the preset's, else the segmenter's default). */
  segmenterVariant?: string;
  /** For a preset: pull its segmenter too (default true). */
  segmenter?: boolean;
  /** For a preset: the text tower's variant (default: the preset's, else the text model's default). */
  textVariant?: string;
  /** For a preset: pull its CLIP text tower too (default true). */
  text?: boolean;
  /**
   * Text towers: download the whole checkpoint (sha256-checked where a hash is known) instead of only
   * the text tower's bytes with Range requests.
   */
  wholeFile?: boolean;
  catalog?: Catalog;
  /** Source of REGION_VQA_* / HF_* variables (default process.env). */
  env?: NodeJS.ProcessEnv;
  baseUrls?: Partial<Record<HostId, string>>;
  hfToken?: string;
  /** Weights of the converted vision model and text tower (default fp32). */
  precision?: "fp32" | "fp16";
  /**
   * Keep the downloaded checkpoint after conversion (default: delete it). A ranged text-tower download
   * is never kept: its working file holds only part of the published file.
   */
  keepSource?: boolean;
  /** Re-hash files that are already installed. */
  verify?: boolean;
  retries?: number;
  retryDelayMs?: number;
  headersTimeoutMs?: number;
  idleTimeoutMs?: number;
  signal?: AbortSignal;
  onProgress?: (progress: DownloadProgress) => void;
  onLog?: (message: string) => void;
  /** Injected for tests that must not depend on the converter; default: src/vision/convert. */
  convertVision?: VisionConverter;
  /** Injected like `convertVision`; default: `convertTextCheckpoint` (src/text/convert). */
  convertText?: TextConverter;
}

export interface PulledFile {
  file: string;
  url: string;
  path: string;
  bytes: number;
  sha256?: string;
  skipped: boolean;
  resumedFrom: number;
  requests: number;
  /**
   * Set when only some ranges of the file were fetched (a text tower): `bytes` is then what was
   * fetched, `fileBytes` the published file's size, and `path` the working file (deleted once converted).
   */
  ranges?: { fileBytes: number; spans: number; verified: string };
}

export interface PullResult {
  name: string;
  kind: "preset" | "model";
  modelsDir: string;
  /** Model folders written or found complete. */
  folders: string[];
  files: PulledFile[];
  /** Whether a vision checkpoint or a text tower was converted in this call. */
  converted: boolean;
  /** Each catalogue model pulled, in order, with its variant, folder and licence (when known). */
  models: PulledModel[];
  /**
   * For a preset: the paths `serve --model NAME` will load (with `segmenterDir` / `textDir` when it has
   * a segmenter / text tower).
   */
  preset?: ResolvedModelPreset;
}

export interface PulledModel {
  name: string;
  variant: string;
  folder: string;
  licence?: string;
  /** Present (true) when this call converted the model (a vision checkpoint or a text tower). */
  converted?: true;
}

interface PullContext {
  options: PullOptions;
  catalog: Catalog;
  root: string;
  hosts: HostConfig;
  result: PullResult;
  /** Model folders converted in this call. */
  convertedDirs: Set<string>;
}

/**
 * `region-vqa pull NAME`: download what a catalogue model or preset needs into the models folder,
 * verify it, convert what needs converting, and write the manifests. Safe to re-run: finished files
 * are kept, partial ones resumed, interrupted conversions redone.
 */
export async function pullModel(name: string, options: PullOptions = {}): Promise<PullResult> {
  const catalog = options.catalog ?? DEFAULT_CATALOG;
  const env = options.env ?? process.env;
  const root = path.resolve(options.modelsDir ?? defaultModelsDir(env));
  const ctx: PullContext = {
    options,
    catalog,
    root,
    hosts: hostConfigFromEnv(env, { baseUrls: options.baseUrls, hfToken: options.hfToken }),
    result: { name, kind: "model", modelsDir: root, folders: [], files: [], converted: false, models: [] },
    convertedDirs: new Set(),
  };
  await mkdir(root, { recursive: true });

  const preset = findCatalogPreset(catalog, name);
  if (preset) {
    ctx.result.kind = "preset";
    const visionModel = requireModel(catalog, preset.vision.model);
    const llmModel = requireModel(catalog, preset.llm.model);
    const visionVariant = pickVariant(visionModel, options.variant ?? preset.vision.variant);
    const llmVariant = pickVariant(llmModel, options.quant ?? preset.llm.variant);
    const segmenter =
      preset.segmenter && options.segmenter !== false
        ? requireModel(catalog, preset.segmenter.model)
        : undefined;
    const segmenterVariant = segmenter
      ? pickVariant(segmenter, options.segmenterVariant ?? preset.segmenter?.variant)
      : undefined;
    const text = preset.text && options.text !== false ? requireModel(catalog, preset.text.model) : undefined;
    const textVariant = text ? pickVariant(text, options.textVariant ?? preset.text?.variant) : undefined;
    await checkSpaceFor(ctx, [
      [visionModel, visionVariant],
      [llmModel, llmVariant],
      ...(segmenter && segmenterVariant ? [[segmenter, segmenterVariant] as [CatalogModel, string]] : []),
      ...(text && textVariant ? [[text, textVariant] as [CatalogModel, string]] : []),
    ]);
    const visionDir = await pullOne(ctx, visionModel, visionVariant);
    const llmDir = await pullOne(ctx, llmModel, llmVariant);
    const segmenterDir =
      segmenter && segmenterVariant ? await pullOne(ctx, segmenter, segmenterVariant) : undefined;
    const textDir = text && textVariant ? await pullOne(ctx, text, textVariant) : undefined;
    const paths = {
      visionDir,
      projectorPath: path.join(llmDir, roleFile(llmModel, llmVariant, "projector").file),
      llmPath: path.join(llmDir, roleFile(llmModel, llmVariant, "llm").file),
    };
    const presetDir = path.join(root, preset.name);
    // A segmenter or text tower pulled before (before --no-segmenter / --no-text) stays recorded.
    const previous = await readPresetFile(presetDir);
    const keptSegmenter =
      !segmenterDir && typeof previous?.segmenter === "string"
        ? { segmenter: previous.segmenter, segmenterVariant: previous.segmenterVariant }
        : {};
    const keptText =
      !textDir && typeof previous?.text === "string" ? { text: previous.text, textVariant: previous.textVariant } : {};
    const record: PresetFile = {
      kind: "preset",
      formatVersion: 1,
      name: preset.name,
      vision: path.relative(presetDir, paths.visionDir),
      projector: path.relative(presetDir, paths.projectorPath),
      llm: path.relative(presetDir, paths.llmPath),
      ...(segmenterDir ? { segmenter: path.relative(presetDir, segmenterDir), segmenterVariant } : keptSegmenter),
      ...(textDir ? { text: path.relative(presetDir, textDir), textVariant } : keptText),
      createdAt: new Date().toISOString(),
      variant: visionVariant,
      quant: llmVariant,
    };
    await mkdir(presetDir, { recursive: true });
    await writeJsonAtomically(path.join(presetDir, PRESET_FILE), record);
    const check = await checkPreset(presetPaths(presetDir, record));
    if (!check.complete) {
      throw new RegionVqaError("model_invalid", `${preset.name} is incomplete after pull: ${check.problems.join("; ")}`);
    }
    ctx.result.preset = { name: preset.name, source: "preset-file", ...presetPaths(presetDir, record) };
    return ctx.result;
  }

  const model = findCatalogModel(catalog, name);
  if (!model) {
    const known = [...catalog.presets.map((p) => p.name), ...catalog.models.map((m) => m.name)].join(", ");
    throw new RegionVqaError("model_not_found", `unknown model "${name}"; known: ${known}`);
  }
  const wanted = model.variantFlag === "quant" ? (options.quant ?? options.variant) : (options.variant ?? options.quant);
  const variant = pickVariant(model, wanted);
  await checkSpaceFor(ctx, [[model, variant]]);
  await pullOne(ctx, model, variant);
  return ctx.result;
}

/**
 * Fails before the first byte when the files still to download clearly cannot fit (sizes from the
 * catalogue, approximate where the exact one is unknown), instead of after gigabytes of downloading.
 */
async function checkSpaceFor(ctx: PullContext, parts: Array<[CatalogModel, string]>): Promise<void> {
  let needed = 0;
  for (const [model, variant] of parts) {
    if (model.layout === "vision" || model.layout === "text") {
      const existing = await checkModelFolder(path.join(ctx.root, model.name, variant));
      if (existing.complete) continue;
    }
    for (const file of variantFiles(model, variant)) {
      const dest = fileDest(ctx.root, model, variant, file);
      if (await stat(dest).catch(() => undefined)) continue;
      const partial = (await stat(partialPathFor(dest)).catch(() => undefined))?.size ?? 0;
      // A ranged text-tower download fetches (and stores) only the text tower's bytes.
      const size = (!ctx.options.wholeFile && file.textApproxBytes) || knownSize(file) || 0;
      needed += Math.max(0, size - partial);
    }
  }
  const fsStat = await statfs(ctx.root).catch(() => undefined);
  if (!fsStat || needed === 0) return;
  const free = fsStat.bavail * fsStat.bsize;
  if (needed > free) {
    throw new RegionVqaError(
      "download_failed",
      `not enough disk space in ${ctx.root} for ${ctx.result.name}: about ${formatBytes(needed)} to download, ` +
        `${formatBytes(free)} free (ENOSPC); free some space or pull into another folder with --dir`,
      { reason: "disk_full", neededBytes: needed, freeBytes: free },
    );
  }
}

/**
 * Where a file goes: checkpoints to convert (vision, text) wait in `.downloads/`, segmenter graphs go to
 * their variant's folder.
 */
function fileDest(root: string, model: CatalogModel, variant: string, file: CatalogFile): string {
  if (model.layout === "vision" || model.layout === "text") return path.join(root, DOWNLOADS_FOLDER, file.file);
  if (model.layout === "segmenter") return path.join(root, model.name, variant, file.file);
  return path.join(root, model.name, file.file);
}

function roleFile(model: CatalogModel, variant: string, role: CatalogFile["role"]): CatalogFile {
  const file = variantFiles(model, variant).find((f) => f.role === role);
  if (!file) throw new RegionVqaError("model_invalid", `catalogue entry ${model.name} has no ${role} file`);
  return file;
}

async function pullOne(ctx: PullContext, model: CatalogModel, variant: string): Promise<string> {
  const dir =
    model.layout === "vision"
      ? await pullVision(ctx, model, variant)
      : model.layout === "segmenter"
        ? await pullSegmenter(ctx, model, variant)
        : model.layout === "text"
          ? await pullText(ctx, model, variant)
          : await pullGguf(ctx, model, variant);
  ctx.result.folders.push(dir);
  const converted = ctx.convertedDirs.has(dir) ? { converted: true as const } : {};
  ctx.result.models.push({ name: model.name, variant, folder: dir, licence: model.licence, ...converted });
  return dir;
}

async function download(
  ctx: PullContext,
  file: CatalogFile,
  dest: string,
): Promise<PulledFile & { sha256Checked: DownloadResult["sha256Checked"] }> {
  const { options, hosts } = ctx;
  const url = fileUrl(hosts, file);
  const r = await downloadFile({
    url,
    dest,
    label: file.file,
    expectedBytes: file.bytes,
    expectedSha256: file.sha256,
    originHeaders: hosts.headers[file.host],
    authHint: authHintFor(file),
    signal: options.signal,
    onProgress: options.onProgress,
    onRetry: options.onLog,
    retries: options.retries,
    retryDelayMs: options.retryDelayMs,
    headersTimeoutMs: options.headersTimeoutMs,
    idleTimeoutMs: options.idleTimeoutMs,
    verifyExisting: options.verify,
  });
  if (!r.skipped && r.sha256Checked === "none") {
    options.onLog?.(`${file.file}: no published sha256 to check against; recorded sha256 ${r.sha256}`);
  }
  const pulled: PulledFile = {
    file: file.file,
    url,
    path: r.path,
    bytes: r.bytes,
    sha256: r.sha256,
    skipped: r.skipped,
    resumedFrom: r.resumedFrom,
    requests: r.requests,
  };
  ctx.result.files.push(pulled);
  return { ...pulled, sha256Checked: r.sha256Checked };
}

/**
 * A vision checkpoint: downloaded to `.downloads/`, converted into `<variant>.converting/`, renamed to
 * `<variant>/` once the converter has written its manifest. An interrupted conversion therefore never
 * leaves a folder that looks finished; the next pull removes the leftover and converts again.
 */
async function pullVision(ctx: PullContext, model: CatalogModel, variant: string): Promise<string> {
  const { options, root } = ctx;
  const checkpoint = model.variants[variant].files.find((f) => f.role === "vision-checkpoint");
  if (!checkpoint || model.convert?.kind !== "alpha-clip-vision") {
    throw new RegionVqaError("model_invalid", `catalogue entry ${model.name} lacks a checkpoint or conversion`);
  }
  const finalDir = path.join(root, model.name, variant);
  const existing = await checkModelFolder(finalDir, { verifyHashes: options.verify });
  const origin = existing.manifest?.origin as { file?: string } | undefined;
  const precisionOk = !options.precision || existing.manifest?.precision === options.precision;
  if (existing.complete && origin?.file === checkpoint.file && precisionOk) {
    options.onLog?.(`${model.name} (${variant}) is already installed in ${finalDir}`);
    return finalDir;
  }

  const source = await download(ctx, checkpoint, fileDest(root, model, variant, checkpoint));
  const sha256 = source.sha256 ?? (await hashFile(source.path, source.bytes));
  const workDir = `${finalDir}${CONVERTING_SUFFIX}`;
  await rm(workDir, { recursive: true, force: true });
  await mkdir(path.dirname(workDir), { recursive: true });
  const precision = options.precision ?? "fp32";
  options.onLog?.(`converting ${checkpoint.file} to ONNX (${precision}) ...`);
  const convert = options.convertVision ?? defaultVisionConverter;
  const started = Date.now();
  const log = (m: string) => options.onLog?.(m);
  const manifest = await convert({
    checkpoint: source.path,
    out: workDir,
    heads: model.convert.heads,
    precision,
    logger: { info: log, warn: (m) => log(`warning: ${m}`) },
  });
  if (model.licence) manifest.licence = model.licence;
  manifest.origin = {
    catalog: model.name,
    variant,
    file: checkpoint.file,
    url: source.url,
    sha256,
    bytes: source.bytes,
  };
  await installConverted(ctx, checkpoint.file, workDir, finalDir, manifest);
  options.onLog?.(`converted in ${((Date.now() - started) / 1000).toFixed(1)} s -> ${finalDir}`);
  if (!options.keepSource) await unlink(source.path).catch(() => undefined);
  return finalDir;
}

/** Writes the converted folder's manifest, checks the folder, and renames `<variant>.converting/` to `<variant>/`. */
async function installConverted(
  ctx: PullContext,
  file: string,
  workDir: string,
  finalDir: string,
  manifest: ModelManifest,
): Promise<void> {
  await writeJsonAtomically(path.join(workDir, "manifest.json"), manifest);
  const check = await checkModelFolder(workDir);
  const problems = check.problems.filter((p) => !p.startsWith("an interrupted conversion"));
  if (problems.length) {
    throw new RegionVqaError("model_invalid", `conversion of ${file} left ${workDir} incomplete: ${problems.join("; ")}`);
  }
  await rm(finalDir, { recursive: true, force: true });
  await rename(workDir, finalDir);
  ctx.result.converted = true;
  ctx.convertedDirs.add(finalDir);
}

/**
 * A CLIP text tower: only its bytes are fetched from the whole-CLIP checkpoint with Range requests
 * (src/models/range-fetch.ts) into a sparse working file `.downloads/<file>.text-ranges`, converted into
 * `<variant>.converting/`, renamed to `<variant>/`; the working file is deleted. A host that ignores
 * Range, a file in another format, or `wholeFile` downloads the whole checkpoint instead (sha256-checked
 * where a hash is known). The manifest's `origin` records how it was fetched and what was verified.
 */
async function pullText(ctx: PullContext, model: CatalogModel, variant: string): Promise<string> {
  const { options, root } = ctx;
  const checkpoint = model.variants[variant].files.find((f) => f.role === "text-checkpoint");
  if (!checkpoint || model.convert?.kind !== "clip-text") {
    throw new RegionVqaError("model_invalid", `catalogue entry ${model.name} lacks a text checkpoint or conversion`);
  }
  const heads = model.convert.heads;
  const finalDir = path.join(root, model.name, variant);
  const existing = await checkModelFolder(finalDir, { verifyHashes: options.verify });
  const installedFrom = existing.manifest?.origin as { file?: string } | undefined;
  const precisionOk = !options.precision || existing.manifest?.precision === options.precision;
  if (existing.complete && existing.manifest?.kind === "clip-text" && installedFrom?.file === checkpoint.file && precisionOk) {
    options.onLog?.(`${model.name} (${variant}) is already installed in ${finalDir}`);
    return finalDir;
  }

  const url = fileUrl(ctx.hosts, checkpoint);
  const precision = options.precision ?? "fp32";
  const workDir = `${finalDir}${CONVERTING_SUFFIX}`;
  await rm(workDir, { recursive: true, force: true });
  await mkdir(path.dirname(workDir), { recursive: true });
  const log = (m: string) => options.onLog?.(m);
  const logger = { info: log, warn: (m: string) => log(`warning: ${m}`) };
  const convert = options.convertText ?? defaultTextConverter;
  const started = Date.now();
  const base = { catalog: model.name, variant, file: checkpoint.file, url };
  let manifest: ModelManifest | undefined;

  if (!options.wholeFile) {
    await mkdir(path.join(root, DOWNLOADS_FOLDER), { recursive: true });
    const work = path.join(root, DOWNLOADS_FOLDER, `${checkpoint.file}${TEXT_RANGES_SUFFIX}`);
    const release = await takeLock(work, checkpoint.file);
    try {
      const fetched = await fetchTensorRanges({
        url,
        dest: work,
        label: checkpoint.file,
        expectedBytes: checkpoint.bytes,
        originHeaders: ctx.hosts.headers[checkpoint.host],
        authHint: authHintFor(checkpoint),
        selectKeys: (sd) => clipTextTensorKeys(sd, { heads }),
        signal: options.signal,
        onProgress: options.onProgress,
        onLog: options.onLog,
        retries: options.retries,
        retryDelayMs: options.retryDelayMs,
        headersTimeoutMs: options.headersTimeoutMs,
        idleTimeoutMs: options.idleTimeoutMs,
      }).catch((err: unknown) => {
        throw withOtherSources(err, ctx, model, variant);
      });
      if (fetched.kind === "ranges") {
        log(
          `${checkpoint.file}: fetched the text tower's ${fetched.keys.length} tensors, ` +
            `${describeFetched(fetched.bytesFetched, fetched.fileBytes)} of the file, in ${fetched.requests} ` +
            `requests; verified: ${fetched.verified}`,
        );
        ctx.result.files.push({
          file: checkpoint.file,
          url,
          path: work,
          bytes: fetched.bytesFetched,
          skipped: false,
          resumedFrom: 0,
          requests: fetched.requests,
          ranges: { fileBytes: fetched.fileBytes, spans: fetched.spans.length, verified: fetched.verified },
        });
        log(`converting the text tower of ${checkpoint.file} to ONNX (${precision}) ...`);
        manifest = await convert({
          checkpoint: work,
          out: workDir,
          heads,
          precision,
          logger,
          view: (sd) => withFetchedTensorsOnly(sd, fetched.keys, checkpoint.file),
          source: false,
        });
        manifest.origin = {
          ...base,
          fetch: "ranges",
          bytesFetched: fetched.bytesFetched,
          fileBytes: fetched.fileBytes,
          requests: fetched.requests,
          format: fetched.format,
          tensors: fetched.keys.length,
          verified: fetched.verified,
          ...(checkpoint.sha256 ? { publishedSha256: checkpoint.sha256 } : {}),
        };
      } else {
        log(`${checkpoint.file}: ${fetched.reason}; downloading the whole file instead`);
      }
    } finally {
      await rm(work, { force: true });
      await release();
    }
  }

  if (!manifest) {
    const source = await download(ctx, checkpoint, fileDest(root, model, variant, checkpoint)).catch(
      (err: unknown) => {
        throw withOtherSources(err, ctx, model, variant);
      },
    );
    const sha256 = source.sha256 ?? (await hashFile(source.path, source.bytes));
    if (source.skipped && checkpoint.sha256 && sha256 !== checkpoint.sha256) {
      throw new RegionVqaError(
        "checksum_mismatch",
        `${source.path}: sha256 ${sha256} does not match the catalogue's ${checkpoint.sha256}; delete it and pull again`,
        { expected: checkpoint.sha256, actual: sha256 },
      );
    }
    const verified = source.sha256Checked !== "none" || (checkpoint.sha256 !== undefined && sha256 === checkpoint.sha256);
    log(`converting the text tower of ${checkpoint.file} to ONNX (${precision}) ...`);
    manifest = await convert({ checkpoint: source.path, out: workDir, heads, precision, logger });
    manifest.origin = {
      ...base,
      fetch: "whole",
      bytesFetched: source.skipped ? 0 : source.bytes - source.resumedFrom,
      fileBytes: source.bytes,
      sha256,
      verified: verified ? "sha256 of the whole file" : "none",
    };
    if (!options.keepSource) await unlink(source.path).catch(() => undefined);
  }
  if (model.licence) manifest.licence = model.licence;
  await installConverted(ctx, checkpoint.file, workDir, finalDir, manifest);
  log(`converted in ${((Date.now() - started) / 1000).toFixed(1)} s -> ${finalDir}`);
  return finalDir;
}

/**
 * A text checkpoint that its host lacks (404) or refuses (401/403): the error names the catalogue's other
 * sources of the same weights (and, in a preset, `--no-text`).
 */
function withOtherSources(err: unknown, ctx: PullContext, model: CatalogModel, variant: string): unknown {
  if (!(err instanceof RegionVqaError) || err.code !== "download_failed") return err;
  const status = err.details?.status;
  const others = Object.keys(model.variants).filter((v) => v !== variant);
  if ((status !== 404 && status !== 401 && status !== 403) || others.length === 0) return err;
  const inPreset = ctx.result.kind === "preset";
  const flag = inPreset ? "--text-variant" : "--variant";
  const reported = model.variants[variant].files.some((f) => f.host === "openai")
    ? " (OpenAI's CDN has been reported to answer 404 for its CLIP files)"
    : "";
  return new RegionVqaError(
    err.code,
    `${err.message}${reported}; other sources of these weights: ${others.map((v) => `${flag} ${v}`).join(", ")}` +
      (inPreset ? "; or leave the text tower out with --no-text" : ""),
    err.details,
  );
}

function authHintFor(file: CatalogFile): string {
  return file.host === "huggingface"
    ? "the host wants credentials: set REGION_VQA_HF_TOKEN or HF_TOKEN"
    : "the host refused access: check the mirror's credentials";
}

/** GGUF files are used as published: one folder per model, its manifest listing every file pulled. */
async function pullGguf(ctx: PullContext, model: CatalogModel, variant: string): Promise<string> {
  const dir = path.join(ctx.root, model.name);
  const pulled: PulledFile[] = [];
  for (const file of variantFiles(model, variant)) {
    pulled.push(await download(ctx, file, fileDest(ctx.root, model, variant, file)));
  }

  const previous = await readManifest(dir).catch(() => undefined);
  const files = new Map<string, ManifestFile>();
  if (previous?.kind === "llm-gguf") {
    for (const f of previous.files ?? []) {
      const st = await stat(path.join(dir, f.path)).catch(() => undefined);
      if (st?.size === f.bytes) files.set(f.path, f);
    }
  }
  const roles = new Map(variantFiles(model, variant).map((f) => [f.file, f.role]));
  for (const p of pulled) {
    const known = files.get(p.file);
    const sha256 = p.sha256 ?? (known?.bytes === p.bytes ? known.sha256 : undefined) ?? (await hashFile(p.path, p.bytes));
    files.set(p.file, { path: p.file, bytes: p.bytes, sha256, role: roles.get(p.file) ?? "llm" });
  }
  const previousOrigin = previous?.origin as { variants?: string[] } | undefined;
  const variants = [...new Set([...(previousOrigin?.variants ?? []), variant])].filter((v) =>
    model.variants[v]?.files.every((f) => files.has(f.file)),
  );
  const manifest: ModelManifest = {
    kind: "llm-gguf",
    formatVersion: 1,
    name: model.name,
    createdAt: previous?.createdAt ?? new Date().toISOString(),
    config: { projector: roleFile(model, variant, "projector").file, projectorType: "mlp2x_gelu" },
    // The projector first, then the LLM files by name.
    files: [...files.values()].sort(
      (a, b) => Number(a.role !== "projector") - Number(b.role !== "projector") || a.path.localeCompare(b.path),
    ),
    ...(model.licence ? { licence: model.licence } : {}),
    origin: { catalog: model.name, variants, homepage: model.homepage },
  };
  await writeJsonAtomically(path.join(dir, "manifest.json"), manifest);
  return dir;
}

/**
 * A segmenter: its ONNX graphs, with any `.onnx_data` files, used exactly as published, all in one
 * folder per variant (the graphs find their external data beside them by its published name). The
 * manifest (kind `sam-segmenter`, what `SamSegmenter.load` reads) is written once every file is there,
 * so a folder without one is a download that did not finish.
 */
async function pullSegmenter(ctx: PullContext, model: CatalogModel, variant: string): Promise<string> {
  const settings = model.segmenterConfig;
  if (!settings) throw new RegionVqaError("model_invalid", `catalogue entry ${model.name} lacks a segmenterConfig`);
  const dir = path.join(ctx.root, model.name, variant);
  const files = variantFiles(model, variant);
  const encoder = roleFile(model, variant, "segmenter-encoder");
  const decoder = roleFile(model, variant, "segmenter-decoder");

  const previous = await readManifest(dir).catch(() => undefined);
  const known = new Map<string, ManifestFile>(
    previous?.kind === SEGMENTER_KIND ? (previous.files ?? []).map((f) => [f.path, f]) : [],
  );
  const listed: ManifestFile[] = [];
  for (const file of files) {
    const p = await download(ctx, file, fileDest(ctx.root, model, variant, file));
    const before = known.get(p.file);
    const sha256 =
      p.sha256 ?? (before?.bytes === p.bytes ? before.sha256 : undefined) ?? (await hashFile(p.path, p.bytes));
    listed.push({ path: file.file, bytes: p.bytes, sha256, role: file.role });
  }
  const manifest: ModelManifest<SegmenterConfig> = {
    kind: SEGMENTER_KIND,
    formatVersion: 1,
    name: model.name,
    createdAt: previous?.createdAt ?? new Date().toISOString(),
    config: { ...settings, encoder: encoder.file, decoder: decoder.file },
    files: listed,
    description: model.description,
    ...(model.licence ? { licence: model.licence } : {}),
    origin: { catalog: model.name, variant, homepage: model.homepage },
  };
  await writeJsonAtomically(path.join(dir, "manifest.json"), manifest);
  const check = await checkModelFolder(dir);
  if (!check.complete) {
    throw new RegionVqaError("model_invalid", `${dir} is incomplete after pull: ${check.problems.join("; ")}`);
  }
  return dir;
}

/** The manifest kind of segmenter folders (`SEGMENTER_KIND` in src/segmenter, not imported: it loads ONNX Runtime). */
const SEGMENTER_KIND = "sam-segmenter";

const defaultVisionConverter: VisionConverter = async (args) => {
  // Loaded on first use: pulling GGUF files alone need not load the ONNX tooling.
  const { convertVisionCheckpoint } = await import("../vision/convert/index.js");
  return convertVisionCheckpoint(args);
};

const defaultTextConverter: TextConverter = async (args) => {
  const { convertTextCheckpoint } = await import("../text/convert.js");
  return convertTextCheckpoint(args);
};
