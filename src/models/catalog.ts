/**
 * The models `region-vqa pull` knows: what each one is, which files make it, where they are published,
 * their sizes and checksums where known, and how they are turned into what the runtime loads.
 *
 * To add a model, add one entry to `DEFAULT_CATALOG`. A size or sha256 that has not been read from
 * the publisher stays undefined: `pull` then trusts the host's own size/hash headers and records the
 * sha256 it computed, and a wrong value here would make every honest download fail.
 */

/** Publishing hosts. Each has a base URL that environment variables can point at a mirror. */
export type HostId = "huggingface" | "openxlab";

export const DEFAULT_BASE_URLS: Record<HostId, string> = {
  huggingface: "https://huggingface.co",
  openxlab: "https://download.openxlab.org.cn",
};

export type FileRole = "vision-checkpoint" | "projector" | "llm";

export interface CatalogFile {
  /** File name as published; also the name it gets on disk. */
  file: string;
  host: HostId;
  /** URL path under the host's base URL (no leading slash). */
  path: string;
  role: FileRole;
  /** Exact size in bytes, when read from the publisher. */
  bytes?: number;
  /** Rough size for display and the free-space check when the exact size is unknown. */
  approxBytes?: number;
  /** Lower-case hex sha256, when read from the publisher. */
  sha256?: string;
}

export interface CatalogVariant {
  description?: string;
  files: CatalogFile[];
}

/** Vision checkpoints are converted into an ONNX folder by `convertVisionCheckpoint`. */
export interface VisionConversion {
  kind: "alpha-clip-vision";
  /** Not stored in checkpoints: CLIP's convention is width / 64 (ViT-L: 16). */
  heads: number;
}

export interface CatalogModel {
  name: string;
  description: string;
  /** `vision`: one folder per variant, converted. `gguf`: one folder, files used as published. */
  layout: "vision" | "gguf";
  /** Which CLI flag picks a variant (`--variant` or `--quant`). */
  variantFlag: "variant" | "quant";
  defaultVariant: string;
  variants: Record<string, CatalogVariant>;
  /** Files needed by every variant (the LLaVA projector). */
  commonFiles?: CatalogFile[];
  convert?: VisionConversion;
  /** Where a human can read about the files. */
  homepage?: string;
}

/** A named pair of a vision model and a LLaVA LLM (with its projector) that `serve`/`ask` accept. */
export interface CatalogPreset {
  name: string;
  description: string;
  vision: { model: string; variant?: string };
  llm: { model: string; variant?: string };
}

export interface Catalog {
  models: CatalogModel[];
  presets: CatalogPreset[];
}

const ALPHA_CLIP_PATH = "models/SunzeY/AlphaCLIP/weight";
const LLAVA_REPO_PATH = "second-state/Llava-v1.5-7B-GGUF/resolve/main";

function alphaClipFile(file: string): CatalogFile {
  return { file, host: "openxlab", path: `${ALPHA_CLIP_PATH}/${file}`, role: "vision-checkpoint" };
}

/**
 * The quantisations second-state usually publishes for a 7B LLaMA. Approximate sizes are those of
 * LLaMA-7B GGUF files of the same type (same tensor shapes); only Q4_K_M's (4.08 GB) was read from
 * the LLaVA repository itself. Exact sizes and hashes were not reachable from here: pull takes them
 * from Hugging Face's X-Linked-Size / X-Linked-Etag headers.
 */
const LLAVA_QUANTS: Array<[quant: string, approxGB: number]> = [
  ["Q2_K", 2.83],
  ["Q3_K_S", 2.95],
  ["Q3_K_M", 3.3],
  ["Q3_K_L", 3.6],
  ["Q4_0", 3.83],
  ["Q4_K_S", 3.86],
  ["Q4_K_M", 4.08],
  ["Q5_0", 4.65],
  ["Q5_K_S", 4.65],
  ["Q5_K_M", 4.78],
  ["Q6_K", 5.53],
  ["Q8_0", 7.16],
];

export const DEFAULT_CATALOG: Catalog = {
  models: [
    {
      name: "alpha-clip-l14-336",
      description: "Alpha-CLIP ViT-L/14@336 visual encoder (SunzeY/AlphaCLIP), converted to ONNX",
      layout: "vision",
      variantFlag: "variant",
      defaultVariant: "grit-20m",
      homepage: "https://github.com/SunzeY/AlphaCLIP/blob/main/model-zoo.md",
      variants: {
        "grit-20m": {
          description: "trained on GRIT-20M, 4 epochs",
          files: [alphaClipFile("clip_l14_336_grit_20m_4xe.pth")],
        },
        "grit-1m": {
          description: "GRIT-1M full fine-tune, 8 epochs: the checkpoint the official LLaVA demo uses",
          files: [alphaClipFile("clip_l14_336_grit1m_fultune_8xe.pth")],
        },
      },
      convert: { kind: "alpha-clip-vision", heads: 16 },
    },
    {
      name: "llava-v1.5-7b",
      description: "LLaVA-1.5-7B language model and mlp2x_gelu projector as GGUF (second-state)",
      layout: "gguf",
      variantFlag: "quant",
      defaultVariant: "Q4_K_M",
      homepage: "https://huggingface.co/second-state/Llava-v1.5-7B-GGUF",
      commonFiles: [
        {
          file: "llava-v1.5-7b-mmproj-model-f16.gguf",
          host: "huggingface",
          path: `${LLAVA_REPO_PATH}/llava-v1.5-7b-mmproj-model-f16.gguf`,
          role: "projector",
          approxBytes: 624e6,
        },
      ],
      variants: Object.fromEntries(
        LLAVA_QUANTS.map(([quant, approxGB]) => [
          quant,
          {
            files: [
              {
                file: `llava-v1.5-7b-${quant}.gguf`,
                host: "huggingface" as const,
                path: `${LLAVA_REPO_PATH}/llava-v1.5-7b-${quant}.gguf`,
                role: "llm" as const,
                approxBytes: approxGB * 1e9,
              },
            ],
          },
        ]),
      ),
    },
  ],
  presets: [
    {
      name: "alpha-llava-7b",
      description: "Alpha-CLIP ViT-L/14@336 + LLaVA-1.5-7B (projector and Q4_K_M LLM by default)",
      vision: { model: "alpha-clip-l14-336" },
      llm: { model: "llava-v1.5-7b" },
    },
  ],
};

export function findCatalogModel(catalog: Catalog, name: string): CatalogModel | undefined {
  return catalog.models.find((m) => m.name === name);
}

export function findCatalogPreset(catalog: Catalog, name: string): CatalogPreset | undefined {
  return catalog.presets.find((p) => p.name === name);
}

/**
 * A variant by its key, case-insensitively, or by the name of one of its files with or without the
 * extension (`grit-1m`, `clip_l14_336_grit1m_fultune_8xe`, `q5_k_m` all work).
 */
export function findVariantKey(model: CatalogModel, wanted: string): string | undefined {
  const w = wanted.toLowerCase();
  for (const [key, variant] of Object.entries(model.variants)) {
    if (key.toLowerCase() === w) return key;
    for (const f of variant.files) {
      const name = f.file.toLowerCase();
      if (name === w || name.replace(/\.[^.]+$/, "") === w) return key;
    }
  }
  return undefined;
}

/** Every file a variant needs, the common ones first. */
export function variantFiles(model: CatalogModel, variantKey: string): CatalogFile[] {
  return [...(model.commonFiles ?? []), ...model.variants[variantKey].files];
}

/** Best known size: exact, else approximate, else undefined. */
export function knownSize(file: CatalogFile): number | undefined {
  return file.bytes ?? file.approxBytes;
}
