/**
 * Load projector weights from a file: an mmproj GGUF (detected by its magic) or a LLaVA checkpoint
 * (safetensors or torch.save zip) holding `model.mm_projector.{0,2}.{weight,bias}`.
 */
import { open } from "node:fs/promises";
import { RegionVqaError } from "../common/errors.js";
import { openStateDict } from "../vision/checkpoint/index.js";
import { readMmprojProjector } from "./mmproj.js";
import { makeProjectorWeights, type ProjectorWeights } from "./weights.js";

const CHECKPOINT_SUFFIXES = {
  w0: "mm_projector.0.weight",
  b0: "mm_projector.0.bias",
  w2: "mm_projector.2.weight",
  b2: "mm_projector.2.bias",
} as const;

async function startsWithGgufMagic(file: string): Promise<boolean> {
  let fh;
  try {
    fh = await open(file, "r");
  } catch {
    throw new RegionVqaError("model_not_found", `projector file not found: ${file}`, { path: file });
  }
  try {
    const head = Buffer.alloc(4);
    const { bytesRead } = await fh.read(head, 0, 4, 0);
    return bytesRead === 4 && head.toString("latin1") === "GGUF";
  } finally {
    await fh.close();
  }
}

/**
 * Read the projector from a LLaVA checkpoint. Keys are matched by their `mm_projector.N.*` ending so
 * `model.mm_projector.0.weight` (full LLaVA checkpoints and the stage-1 `mm_projector.bin`) and
 * prefix-less exports both work. Only the four projector tensors are read.
 */
export function readCheckpointProjector(file: string): ProjectorWeights {
  const dict = openStateDict(file);
  try {
    const keys = dict.keys();
    const names = {} as Record<keyof typeof CHECKPOINT_SUFFIXES, string>;
    for (const [part, suffix] of Object.entries(CHECKPOINT_SUFFIXES) as Array<
      [keyof typeof CHECKPOINT_SUFFIXES, string]
    >) {
      const matches = keys.filter((k) => k === suffix || k.endsWith(`.${suffix}`));
      if (matches.length === 0) {
        throw new RegionVqaError(
          "checkpoint_invalid",
          `${file} has no LLaVA projector tensor "model.${suffix}"` +
            (keys.some((k) => k.includes("mm_projector"))
              ? " (it has other mm_projector keys: only mlp2x_gelu is supported)"
              : " (for sharded LLaVA checkpoints pass the shard that holds mm_projector)"),
          { path: file },
        );
      }
      if (matches.length > 1) {
        throw new RegionVqaError(
          "checkpoint_invalid",
          `${file} has several "${suffix}" tensors: ${matches.join(", ")}`,
          {
            path: file,
          },
        );
      }
      names[part] = matches[0];
    }
    const read = (key: string) => ({ data: dict.read(key), shape: dict.info(key).shape });
    return makeProjectorWeights(
      { w0: read(names.w0), b0: read(names.b0), w2: read(names.w2), b2: read(names.b2) },
      file,
      names,
      { path: file, format: "llava-checkpoint", dtype: dict.info(names.w0).dtype },
    );
  } finally {
    dict.close();
  }
}

/** Projector weights from an mmproj GGUF or a LLaVA checkpoint, by content (not file name). */
export async function loadProjectorWeights(file: string): Promise<ProjectorWeights> {
  if (await startsWithGgufMagic(file)) {
    const { tensorBytesRead: _bytes, ...weights } = await readMmprojProjector(file);
    return weights;
  }
  return readCheckpointProjector(file);
}
