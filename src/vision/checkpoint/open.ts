import fs from "node:fs";
import { RegionVqaError } from "../../common/errors.js";
import { openPytorchZip } from "./pytorch.js";
import { looksLikeSafetensors, openSafetensors } from "./safetensors.js";
import type { StateDict } from "./state-dict.js";

/**
 * Open a checkpoint by looking at its first bytes: a zip (torch.save) or safetensors. Tensors are
 * read lazily; call `close()` when done. Throws `checkpoint_invalid` for anything else.
 */
export function openStateDict(file: string): StateDict {
  let fd: number;
  try {
    fd = fs.openSync(file, "r");
  } catch (err) {
    throw new RegionVqaError(
      "checkpoint_invalid",
      `cannot open checkpoint ${file}: ${(err as Error).message}`,
      {
        path: file,
      },
    );
  }
  let head: Buffer;
  let size: number;
  try {
    size = fs.fstatSync(fd).size;
    head = Buffer.alloc(Math.min(16, size));
    fs.readSync(fd, head, 0, head.length, 0);
  } finally {
    fs.closeSync(fd);
  }
  if (head.length >= 4 && head.readUInt32LE(0) === 0x04034b50) return openPytorchZip(file);
  if (looksLikeSafetensors(head, size)) return openSafetensors(file);
  if (head.length >= 2 && head[0] === 0x80 && head[1] <= 5) {
    throw new RegionVqaError(
      "checkpoint_invalid",
      `${file}: legacy (pre-1.6, non-zip) PyTorch checkpoint; re-save it with torch.save in a current PyTorch`,
      { path: file },
    );
  }
  throw new RegionVqaError(
    "checkpoint_invalid",
    `${file}: not a PyTorch (torch.save zip) or safetensors checkpoint`,
    { path: file },
  );
}
