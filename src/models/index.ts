/**
 * Model catalogue, downloader and installed-model listing: what `region-vqa pull` and
 * `region-vqa models` do, and how `serve`/`ask` turn a preset name into model paths.
 */
export {
  DEFAULT_BASE_URLS,
  DEFAULT_CATALOG,
  findCatalogModel,
  findCatalogPreset,
  findVariantKey,
  knownSize,
  variantFiles,
  type Catalog,
  type CatalogFile,
  type CatalogModel,
  type CatalogPreset,
  type CatalogVariant,
  type FileRole,
  type HostId,
  type SegmenterSettings,
  type TextConversion,
} from "./catalog.js";
export {
  corruptPathFor,
  downloadFile,
  formatBytes,
  hashFile,
  partialPathFor,
  sidecarPathFor,
  type DownloadOptions,
  type DownloadProgress,
  type DownloadResult,
} from "./download.js";
export { fileUrl, hostConfigFromEnv, mirrorEnvName, type HostConfig } from "./hosts.js";
export {
  checkModelFolder,
  listInstalledModels,
  type FolderCheck,
  type InstalledEntry,
  type ListOptions,
  type PresetFile,
  type PresetPaths,
} from "./installed.js";
export { defaultModelsDir, modelRoots, repoModelsDir } from "./paths.js";
export { clipTextTensorKeys } from "./text-tower.js";
export { createProgressPrinter, formatDuration, formatProgressLine, type ProgressPrinter } from "./progress.js";
export {
  pullModel,
  type PullOptions,
  type PullResult,
  type PulledFile,
  type PulledModel,
  type TextConverter,
  type VisionConverter,
} from "./pull.js";
export {
  coalesceSpans,
  fetchTensorRanges,
  withFetchedTensorsOnly,
  type RangeFetchOptions,
  type RangeFetchResult,
  type RangeFetchUnsupported,
} from "./range-fetch.js";
export {
  installedSegmenterIn,
  installedTextIn,
  resolveModelPreset,
  type ResolveOptions,
  type ResolvedModelPreset,
} from "./resolve.js";
export {
  DEFAULT_MODEL_DIR,
  resolveModelOptions,
  type ModelConfig,
  type ModelPipelineOptions,
} from "./select.js";
