/**
 * The models `region-vqa pull` knows: what each one is, which files make it, where they are published,
 * their sizes and checksums where known, and how they are turned into what the runtime loads.
 *
 * To add a model, add one entry to `DEFAULT_CATALOG`. A size or sha256 that has not been read from
 * the publisher stays undefined: `pull` then trusts the host's own size/hash headers and records the
 * sha256 it computed, and a wrong value here would make every honest download fail.
 */
import type { SegmenterConfig } from "../segmenter/types.js";

/** Publishing hosts. Each has a base URL that environment variables can point at a mirror. */
export type HostId = "huggingface" | "openxlab" | "openai";

export const DEFAULT_BASE_URLS: Record<HostId, string> = {
  huggingface: "https://huggingface.co",
  openxlab: "https://download.openxlab.org.cn",
  openai: "https://openaipublic.azureedge.net",
};

/**
 * What a file is to the runtime. Segmenter folders hold two ONNX graphs (`segmenter-encoder`,
 * `segmenter-decoder`) and, for graphs published with external weights, their `.onnx_data` files
 * (`onnx-data`), which must keep their published names: the graph refers to them by name.
 */
export type FileRole =
  | "vision-checkpoint"
  | "text-checkpoint"
  | "projector"
  | "llm"
  | "segmenter-encoder"
  | "segmenter-decoder"
  | "onnx-data";

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
  /**
   * For a `text-checkpoint` holding a whole CLIP: rough size of its text tower's bytes, which is what a
   * ranged fetch downloads (display and the free-space check).
   */
  textApproxBytes?: number;
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

/**
 * The `config` of a segmenter folder's manifest (see `SegmenterConfig` in src/segmenter/types.ts),
 * except the graph file names, which come from the variant's `segmenter-encoder` / `segmenter-decoder`
 * files.
 */
/**
 * CLIP text towers are cut out of whole-CLIP checkpoints and converted into an ONNX folder (manifest kind
 * `clip-text`) by `convertTextCheckpoint`; only the text tower's bytes are downloaded where the host
 * answers Range requests (src/models/range-fetch.ts).
 */
export interface TextConversion {
  kind: "clip-text";
  /** Not stored in checkpoints: CLIP's convention is width / 64 (ViT-L/14's text tower: 768 / 64 = 12). */
  heads: number;
}

export type SegmenterSettings = Pick<SegmenterConfig, "family" | "imageSize" | "resize" | "mean" | "std" | "maskSize">;

export interface CatalogModel {
  name: string;
  description: string;
  /**
   * `vision`: one folder per variant, converted. `gguf`: one folder, files used as published.
   * `segmenter`: one folder per variant holding its ONNX graphs as published, plus a manifest of kind
   * `sam-segmenter` written by pull. `text`: one folder per variant, the text tower of a whole-CLIP
   * checkpoint converted to ONNX (manifest kind `clip-text`).
   */
  layout: "vision" | "gguf" | "segmenter" | "text";
  /** Which CLI flag picks a variant (`--variant` or `--quant`). */
  variantFlag: "variant" | "quant";
  defaultVariant: string;
  variants: Record<string, CatalogVariant>;
  /** Files needed by every variant (the LLaVA projector; SAM 2.1-tiny's prompt decoder). */
  commonFiles?: CatalogFile[];
  convert?: VisionConversion | TextConversion;
  /** For the `segmenter` layout: what the manifest's config says besides the graph file names. */
  segmenterConfig?: SegmenterSettings;
  /** Where a human can read about the files. */
  homepage?: string;
  /**
   * The licence the weights are published under (an SPDX id where there is one), shown by `pull` and
   * `models`. Undefined when it was not established.
   */
  licence?: string;
}

/**
 * A named pair of a vision model and a LLaVA LLM (with its projector), optionally with a segmenter for
 * clicks, that `serve`/`ask` accept.
 */
export interface CatalogPreset {
  name: string;
  description: string;
  vision: { model: string; variant?: string };
  llm: { model: string; variant?: string };
  /** A segmenter (layout `segmenter`) that turns clicks into masks; pulled with the preset. */
  segmenter?: { model: string; variant?: string };
  /** A CLIP text tower (layout `text`) for zero-shot classification and text embeddings; pulled with the preset. */
  text?: { model: string; variant?: string };
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

/**
 * SAM 2.1 Hiera-tiny as exported to ONNX by onnx-community: each graph is a small `.onnx` whose weights
 * sit in an `.onnx_data` file beside it, referred to by that exact name. The revision is pinned (a
 * Hugging Face `resolve/` URL needs the full 40-hex commit, not a prefix); the byte counts below are
 * those of this revision. The repository carries no licence tag of its own: the weights are Meta's
 * SAM 2.1, released under Apache-2.0.
 */
const SAM21_TINY_REVISION = "814a066640debee5a91e70aa401fb8e17e030503";
const SAM21_TINY_PATH = `onnx-community/sam2.1-hiera-tiny-ONNX/resolve/${SAM21_TINY_REVISION}/onnx`;

/**
 * SlimSAM-77 (uniform pruning), a SAM 1-style model a few times smaller than SAM 2.1-tiny, as exported to
 * ONNX by Xenova: self-contained graphs (no external data), and a prompt decoder without a box input.
 * No full revision id is recorded here, so the files come from `main` and their sizes are only
 * approximate (pull takes the exact ones from the host). Xenova's repository has no licence tag; the
 * upstream weights (Zigeng/SlimSAM-uniform-77) are tagged Apache-2.0.
 */
const SLIMSAM_PATH = "Xenova/slimsam-77-uniform/resolve/main/onnx";

/**
 * OpenAI's CLIP ViT-L/14@336: the TorchScript archive OpenAI publishes (fp16, both towers; the URL
 * names its sha256) and Hugging Face's transformers conversion (fp32). Alpha-CLIP keeps this text tower
 * frozen, so these are the text weights that go with the Alpha-CLIP checkpoints. Of the ~891 MB file the
 * text tower (123.65 M parameters) is ~247 MB in fp16, ~495 MB in fp32. The exact file sizes were not
 * read from the publishers. Whether the Hugging Face repository also publishes `model.safetensors` was
 * not established either: `--variant hf-safetensors` fails with a 404 where it does not.
 */
const OPENAI_CLIP_L14_336_SHA256 = "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02";
const HF_CLIP_L14_336_PATH = "openai/clip-vit-large-patch14-336/resolve/main";

/** SAM's ImageNet normalisation, shared by both families. */
const SAM_MEAN: [number, number, number] = [0.485, 0.456, 0.406];
const SAM_STD: [number, number, number] = [0.229, 0.224, 0.225];

function hfOnnxFile(
  repoPath: string,
  file: string,
  role: FileRole,
  size: { bytes: number } | { approxBytes: number },
): CatalogFile {
  return { file, host: "huggingface", path: `${repoPath}/${file}`, role, ...size };
}

/** SlimSAM's two graphs for one file-name suffix (`""`, `"_quantized"`, `"_fp16"`). */
function slimSamFiles(suffix: string, approxEncoder: number, approxDecoder: number): CatalogFile[] {
  return [
    hfOnnxFile(SLIMSAM_PATH, `vision_encoder${suffix}.onnx`, "segmenter-encoder", { approxBytes: approxEncoder }),
    hfOnnxFile(SLIMSAM_PATH, `prompt_encoder_mask_decoder${suffix}.onnx`, "segmenter-decoder", {
      approxBytes: approxDecoder,
    }),
  ];
}

export const DEFAULT_CATALOG: Catalog = {
  models: [
    {
      name: "alpha-clip-l14-336",
      description: "Alpha-CLIP ViT-L/14@336 visual encoder (SunzeY/AlphaCLIP), converted to ONNX",
      layout: "vision",
      variantFlag: "variant",
      defaultVariant: "grit-20m",
      homepage: "https://github.com/SunzeY/AlphaCLIP/blob/main/model-zoo.md",
      // The LICENSE of the SunzeY/AlphaCLIP repository, which publishes these checkpoints.
      licence: "Apache-2.0",
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
      // LLaVA-1.5-7B is fine-tuned from Vicuna-7B v1.5, itself a Llama 2 model: its model card
      // (liuhaotian/llava-v1.5-7b) puts the weights under Meta's Llama 2 Community License.
      licence: "Llama 2 Community License",
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
    {
      name: "sam2.1-tiny",
      description: "SAM 2.1 Hiera-tiny segmenter (clicks and boxes to masks), ONNX by onnx-community",
      layout: "segmenter",
      variantFlag: "variant",
      defaultVariant: "fp32",
      homepage: "https://huggingface.co/onnx-community/sam2.1-hiera-tiny-ONNX",
      licence: "Apache-2.0",
      segmenterConfig: {
        family: "sam2",
        imageSize: 1024,
        // SAM 2's processor resizes to a 1024 x 1024 square without keeping the aspect ratio.
        resize: "stretch",
        mean: SAM_MEAN,
        std: SAM_STD,
        maskSize: 256,
      },
      // Both variants use the fp32 prompt decoder (small, and run once per click).
      commonFiles: [
        hfOnnxFile(SAM21_TINY_PATH, "prompt_encoder_mask_decoder.onnx", "segmenter-decoder", { bytes: 213_114 }),
        hfOnnxFile(SAM21_TINY_PATH, "prompt_encoder_mask_decoder.onnx_data", "onnx-data", { bytes: 20_958_208 }),
      ],
      variants: {
        fp32: {
          description: "fp32 image encoder (about 134 MB of weights)",
          files: [
            hfOnnxFile(SAM21_TINY_PATH, "vision_encoder.onnx", "segmenter-encoder", { bytes: 354_238 }),
            hfOnnxFile(SAM21_TINY_PATH, "vision_encoder.onnx_data", "onnx-data", { bytes: 134_084_864 }),
          ],
        },
        fp16: {
          description: "fp16 image encoder (half the download; float32 inputs and outputs)",
          files: [
            hfOnnxFile(SAM21_TINY_PATH, "vision_encoder_fp16.onnx", "segmenter-encoder", { bytes: 314_925 }),
            hfOnnxFile(SAM21_TINY_PATH, "vision_encoder_fp16.onnx_data", "onnx-data", { bytes: 67_005_504 }),
          ],
        },
      },
    },
    {
      name: "slimsam-77",
      description: "SlimSAM-77 segmenter (a pruned SAM 1; clicks to masks, no boxes), ONNX by Xenova",
      layout: "segmenter",
      variantFlag: "variant",
      defaultVariant: "fp32",
      homepage: "https://huggingface.co/Xenova/slimsam-77-uniform",
      licence: "Apache-2.0",
      segmenterConfig: {
        family: "sam1",
        imageSize: 1024,
        // SAM 1's processor scales the longest side to 1024 and pads the rest.
        resize: "longest-side",
        mean: SAM_MEAN,
        std: SAM_STD,
        maskSize: 256,
      },
      variants: {
        fp32: { description: "fp32 graphs", files: slimSamFiles("", 23.3e6, 16.6e6) },
        quantized: { description: "8-bit quantized graphs (the smallest)", files: slimSamFiles("_quantized", 8.88e6, 4.9e6) },
        fp16: { description: "fp16 graphs", files: slimSamFiles("_fp16", 12.2e6, 8.55e6) },
      },
    },
    {
      name: "clip-text-l14-336",
      description:
        "OpenAI CLIP ViT-L/14@336 text tower (zero-shot region classification, text embeddings), converted to ONNX",
      layout: "text",
      variantFlag: "variant",
      // Hugging Face by default: openai/CLIP issue #516 (Oct 2025, confirmed by others in 2026) reports
      // that OpenAI's openaipublic.azureedge.net model URLs answer 404. `--variant openai` still tries it
      // (the file's sha256 is known, so a mirror of it is fully verifiable).
      defaultVariant: "hf",
      homepage: "https://github.com/openai/CLIP",
      // The LICENSE of the openai/CLIP repository, which publishes the weights.
      licence: "MIT",
      variants: {
        openai: {
          description: "OpenAI's TorchScript release (fp16); only the text tower's bytes are fetched",
          files: [
            {
              file: "ViT-L-14-336px.pt",
              host: "openai",
              path: `clip/models/${OPENAI_CLIP_L14_336_SHA256}/ViT-L-14-336px.pt`,
              role: "text-checkpoint",
              sha256: OPENAI_CLIP_L14_336_SHA256,
              approxBytes: 891e6,
              textApproxBytes: 247e6,
            },
          ],
        },
        hf: {
          description: "Hugging Face openai/clip-vit-large-patch14-336 (fp32); only the text tower's bytes are fetched",
          files: [
            {
              file: "pytorch_model.bin",
              host: "huggingface",
              path: `${HF_CLIP_L14_336_PATH}/pytorch_model.bin`,
              role: "text-checkpoint",
              approxBytes: 1.71e9,
              textApproxBytes: 495e6,
            },
          ],
        },
        "hf-safetensors": {
          description: "the same as model.safetensors, where published (no checksums: the bytes are not verified)",
          files: [
            {
              file: "model.safetensors",
              host: "huggingface",
              path: `${HF_CLIP_L14_336_PATH}/model.safetensors`,
              role: "text-checkpoint",
              approxBytes: 1.71e9,
              textApproxBytes: 495e6,
            },
          ],
        },
      },
      convert: { kind: "clip-text", heads: 12 },
    },
  ],
  presets: [
    {
      name: "alpha-llava-7b",
      description:
        "Alpha-CLIP ViT-L/14@336 + LLaVA-1.5-7B (projector and Q4_K_M LLM by default), SAM 2.1-tiny for " +
        "clicks, CLIP ViT-L/14@336's text tower for zero-shot classification",
      vision: { model: "alpha-clip-l14-336" },
      llm: { model: "llava-v1.5-7b" },
      segmenter: { model: "sam2.1-tiny" },
      text: { model: "clip-text-l14-336" },
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
