/**
 * Which tensors of a CLIP checkpoint the text-tower converter reads, decided by the converter's own
 * inspection (src/text/config.ts) rather than by a second list of names: `inspectClipTextStateDict`
 * checks the shape of every tensor the conversion uses, so the keys it asks about are exactly those
 * the ranged download must fetch. It never reads `visual.*` / `vision_model.*` tensors.
 */
import { inspectClipTextStateDict } from "../text/config.js";
import type { StateDict } from "../vision/checkpoint/index.js";

/**
 * The checkpoint keys (as `sd` names them) that converting its CLIP text tower reads. Only tensor
 * metadata is used: no tensor data is read from `sd`, so it may be a checkpoint whose data is not there
 * yet. Throws `checkpoint_invalid` when `sd` holds no CLIP text tower.
 */
export function clipTextTensorKeys(sd: StateDict, options: { heads?: number } = {}): string[] {
  const used = new Set<string>();
  const recording: StateDict = {
    keys: () => sd.keys(),
    has: (key) => sd.has(key),
    info: (key) => {
      const info = sd.info(key);
      used.add(key);
      return info;
    },
    read: (key) => {
      // Only `logit_scale` is read during inspection; its value does not matter here.
      const count = sd.info(key).shape.reduce((a, b) => a * b, 1);
      used.add(key);
      return new Float32Array(count);
    },
    close: () => {},
    source: sd.source,
  };
  inspectClipTextStateDict(recording, options);
  return [...used].sort();
}
