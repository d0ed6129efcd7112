/**
 * The projector inside llama.cpp-style mmproj GGUF files (`mm.0.*`, `mm.2.*`), read by offset so that a
 * 600 MB file with a whole CLIP tower costs only the projector's bytes, and written the same way for the
 * bundled default model. Key names and layout: docs/reference.md section 3.
 */
import { RegionVqaError } from "../common/errors.js";
import {
  gguf,
  ggufMetadataValue,
  openGgufFile,
  writeGgufFile,
  type GgufWriteResult,
} from "../common/gguf/index.js";
import { makeProjectorWeights, type ProjectorWeights } from "./weights.js";

export const MMPROJ_TENSORS = {
  w0: "mm.0.weight",
  b0: "mm.0.bias",
  w2: "mm.2.weight",
  b2: "mm.2.bias",
} as const;

const GGML_TYPE_NAME: Record<number, string> = { 0: "F32", 1: "F16", 30: "BF16" };

/** Read the LLaVA-1.5 MLP projector from an mmproj GGUF; `tensorBytesRead` tells how much data was read. */
export async function readMmprojProjector(
  path: string,
): Promise<ProjectorWeights & { tensorBytesRead: number }> {
  const file = await openGgufFile(path);
  const projectorType = ggufMetadataValue(file.metadata, "clip.projector_type");
  // Older mmproj files have no projector_type key; they are all "mlp" when mm.0/mm.2 exist.
  if (projectorType !== undefined && projectorType !== "mlp") {
    throw new RegionVqaError(
      "model_invalid",
      `${path} has a "${String(projectorType)}" projector; only LLaVA-1.5's "mlp" projector (mlp2x_gelu) is supported`,
      { path, projectorType },
    );
  }
  const missing = Object.values(MMPROJ_TENSORS).filter((n) => !file.tensors.has(n));
  if (missing.length > 0) {
    throw new RegionVqaError(
      "model_invalid",
      `${path} has no LLaVA projector: tensor(s) ${missing.join(", ")} missing` +
        (file.tensors.has("mm.3.weight") || file.tensors.has("mm.1.weight")
          ? " (this looks like a different projector layout)"
          : ""),
      { path, missing },
    );
  }
  const read = async (name: string) => {
    const ref = file.tensors.get(name)!;
    return { data: await file.readTensor(name), shape: ref.shape };
  };
  const w0 = await read(MMPROJ_TENSORS.w0);
  const b0 = await read(MMPROJ_TENSORS.b0);
  const w2 = await read(MMPROJ_TENSORS.w2);
  const b2 = await read(MMPROJ_TENSORS.b2);
  const dtype = GGML_TYPE_NAME[file.tensors.get(MMPROJ_TENSORS.w0)!.ggmlType] ?? "unknown";
  const weights = makeProjectorWeights({ w0, b0, w2, b2 }, path, MMPROJ_TENSORS, {
    path,
    format: "mmproj-gguf",
    dtype,
  });
  return { ...weights, tensorBytesRead: file.tensorBytesRead };
}

/**
 * Write a projector-only mmproj GGUF (general.architecture "clip", clip.has_llava_projector true,
 * clip.projector_type "mlp"). Weights are stored F16 or F32 as asked; biases always F32, as llama.cpp's
 * converter does.
 */
export async function writeMmprojGguf(
  path: string,
  weights: ProjectorWeights,
  options: { precision?: "f16" | "f32"; name?: string } = {},
): Promise<GgufWriteResult> {
  const precision = options.precision ?? "f16";
  const wType = precision === "f16" ? "F16" : "F32";
  return writeGgufFile(path, {
    metadata: [
      gguf.str("general.architecture", "clip"),
      gguf.u32("general.file_type", precision === "f16" ? 1 : 0),
      gguf.str("general.name", options.name ?? "llava-1.5-projector"),
      gguf.str("general.description", "LLaVA-1.5 mlp2x_gelu projector (region-vqa)"),
      gguf.bool("clip.has_text_encoder", false),
      gguf.bool("clip.has_vision_encoder", false),
      gguf.bool("clip.has_llava_projector", true),
      gguf.str("clip.projector_type", "mlp"),
    ],
    tensors: [
      {
        name: MMPROJ_TENSORS.w0,
        shape: [weights.hiddenWidth, weights.inWidth],
        type: wType,
        data: weights.w0,
      },
      { name: MMPROJ_TENSORS.b0, shape: [weights.hiddenWidth], type: "F32", data: weights.b0 },
      {
        name: MMPROJ_TENSORS.w2,
        shape: [weights.outWidth, weights.hiddenWidth],
        type: wType,
        data: weights.w2,
      },
      { name: MMPROJ_TENSORS.b2, shape: [weights.outWidth], type: "F32", data: weights.b2 },
    ],
  });
}
