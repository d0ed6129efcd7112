/**
 * Mask logits -> masks of the image's size, as the reference post-processing does (docs/reference.md
 * section 8): bilinear interpolation with PyTorch's `align_corners=False` arithmetic (no antialiasing),
 * threshold at logit 0. SAM 2.1: logits straight to the image size. SAM 1: to the padded input frame,
 * crop the image's part, then to the image size.
 */
import { resizeBilinear } from "../common/imaging/torch-bilinear.js";
import type { Mask } from "../vision/types.js";
import type { SamFrame, SegmenterConfig } from "./types.js";

/** One mask's logits [M, M] -> logits of the image's size. */
export function logitsToImage(
  logits: Float32Array,
  frame: SamFrame,
  config: Pick<SegmenterConfig, "maskSize" | "resize">,
): Float32Array {
  const M = config.maskSize;
  const full = { left: 0, top: 0, width: M, height: M };
  if (config.resize === "stretch") return resizeBilinear(logits, M, full, frame.width, frame.height);
  const S = frame.inputSize;
  const padded = resizeBilinear(logits, M, full, S, S);
  return resizeBilinear(
    padded,
    S,
    { left: 0, top: 0, width: frame.resizedWidth, height: frame.resizedHeight },
    frame.width,
    frame.height,
  );
}

/** Logits of the image's size -> a 0/1 mask (logit > 0 is inside) and its area. */
export function thresholdLogits(
  logits: Float32Array,
  width: number,
  height: number,
): { mask: Mask; area: number } {
  const data = new Uint8Array(width * height);
  let area = 0;
  for (let i = 0; i < data.length; i++) {
    if (logits[i] > 0) {
      data[i] = 1;
      area++;
    }
  }
  return { mask: { width, height, data }, area };
}
