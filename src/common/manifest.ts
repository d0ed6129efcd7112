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
