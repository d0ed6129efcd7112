/**
 * SAM preprocessing and prompt encoding, as the reference processors do it (docs/reference.md
 * section 8): Pillow BILINEAR resize (Hugging Face's SAM processors resize with Pillow), pixel / 255,
 * mean/std, and for SAM 1 zero padding bottom-right after normalising. Point and box coordinates are
 * scaled into the same frame; the model adds its own half-pixel shift.
 */
import { RegionVqaError } from "../common/errors.js";
import type { Tensor } from "../common/tensor.js";
import type { WireTensor } from "../common/ort/index.js";
import { pillowResize } from "../common/imaging/pillow-resize.js";
import type { RgbImage } from "../vision/types.js";
import type { SamFrame, SegmentPrompt, SegmenterConfig } from "./types.js";

/** Where the image lands in the input frame. SAM 1 rounds like Hugging Face's `int(x * scale + 0.5)`. */
export function samFrame(width: number, height: number, config: SegmenterConfig): SamFrame {
  const S = config.imageSize;
  if (config.resize === "stretch") return { width, height, resizedWidth: S, resizedHeight: S, inputSize: S };
  const scale = S / Math.max(width, height);
  return {
    width,
    height,
    resizedWidth: Math.floor(width * scale + 0.5),
    resizedHeight: Math.floor(height * scale + 0.5),
    inputSize: S,
  };
}

/** RGB image -> `pixel_values` [1, 3, S, S] and the frame it was mapped into. */
export function preprocessForSam(
  image: RgbImage,
  config: SegmenterConfig,
): { pixelValues: Tensor; frame: SamFrame } {
  const frame = samFrame(image.width, image.height, config);
  const { resizedWidth: w, resizedHeight: h, inputSize: S } = frame;
  const resized = pillowResize(image.data, image.width, image.height, 3, w, h, "bilinear");
  const plane = S * S;
  // Zero after normalising is the padding value (SAM 1); stretched frames have none.
  const data = new Float32Array(3 * plane);
  for (let c = 0; c < 3; c++) {
    const mean = config.mean[c];
    const invStd = 1 / config.std[c];
    const out = c * plane;
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        data[out + y * S + x] = (resized[(y * w + x) * 3 + c] / 255 - mean) * invStd;
      }
    }
  }
  return { pixelValues: { data, shape: [1, 3, S, S] }, frame };
}

/** Most points in one prompt (includes and excludes together). */
export const MAX_PROMPT_POINTS = 32;

/**
 * Checks a prompt against the image: finite numbers, labels 0 or 1, points and box inside
 * [0, width] x [0, height], at most MAX_PROMPT_POINTS points, and at least one point or a box.
 */
export function checkPrompt(prompt: SegmentPrompt, width: number, height: number): void {
  const { points, box } = prompt;
  if (!Array.isArray(points))
    throw new RegionVqaError("point_invalid", "Points must be a list of [x, y] or [x, y, label].");
  if (points.length === 0 && !box)
    throw new RegionVqaError("point_invalid", "A points region needs at least one point or a box.");
  if (points.length > MAX_PROMPT_POINTS) {
    throw new RegionVqaError(
      "too_many_points",
      `The prompt has ${points.length} points; the limit is ${MAX_PROMPT_POINTS}.`,
      { points: points.length, maxPoints: MAX_PROMPT_POINTS },
    );
  }
  points.forEach((p, i) => {
    if (!Number.isFinite(p.x) || !Number.isFinite(p.y))
      throw new RegionVqaError("point_invalid", `Point ${i} is not two finite numbers.`);
    if (p.label !== 0 && p.label !== 1) {
      throw new RegionVqaError(
        "point_invalid",
        `Point ${i} has label ${String(p.label)}; a label is 1 (include) or 0 (exclude).`,
      );
    }
    if (p.x < 0 || p.y < 0 || p.x > width || p.y > height) {
      throw new RegionVqaError(
        "point_outside_image",
        `Point ${i} (${p.x}, ${p.y}) is outside the ${width}x${height} image (valid: 0 <= x <= ${width}, 0 <= y <= ${height}).`,
        { index: i, x: p.x, y: p.y, width, height },
      );
    }
  });
  if (box) {
    const [x1, y1, x2, y2] = box;
    if (
      !box.every(Number.isFinite) ||
      !(x2 > x1) ||
      !(y2 > y1) ||
      x1 < 0 ||
      y1 < 0 ||
      x2 > width ||
      y2 > height
    ) {
      throw new RegionVqaError(
        "box_invalid",
        `Invalid box [${box.join(", ")}]: needs 0 <= x1 < x2 <= ${width} and 0 <= y1 < y2 <= ${height}.`,
      );
    }
  }
}

/** The decoder's prompt inputs for one prompt (B = 1, one prompt set). */
export interface PromptTensors {
  input_points: WireTensor;
  input_labels: WireTensor;
  /** Only for graphs with an `input_boxes` input (SAM 2): [1, nb, 4], nb = 0 or 1. */
  input_boxes?: WireTensor;
}

/**
 * Image-pixel prompt -> the decoder's tensors, coordinates scaled into the input frame
 * (x * resizedWidth / width, y * resizedHeight / height, as the reference processors do). Graphs
 * without a box input (SAM 1 exports) refuse boxes: SAM's point embedding cannot stand in for one.
 */
export function encodePrompt(prompt: SegmentPrompt, frame: SamFrame, boxInput: boolean): PromptTensors {
  const sx = frame.resizedWidth / frame.width;
  const sy = frame.resizedHeight / frame.height;
  const n = prompt.points.length;
  const points = new Float32Array(2 * n);
  const labels = new BigInt64Array(n);
  prompt.points.forEach((p, i) => {
    points[2 * i] = p.x * sx;
    points[2 * i + 1] = p.y * sy;
    labels[i] = BigInt(p.label);
  });
  const tensors: PromptTensors = {
    input_points: { data: points, dims: [1, 1, n, 2] },
    input_labels: { data: labels, dims: [1, 1, n] },
  };
  if (boxInput) {
    const b = prompt.box;
    tensors.input_boxes = b
      ? { data: Float32Array.of(b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy), dims: [1, 1, 4] }
      : { data: new Float32Array(0), dims: [1, 0, 4] };
  } else if (prompt.box) {
    throw new RegionVqaError(
      "box_invalid",
      "This segmenter (a SAM 1 export) takes no box prompts; give points, or use a SAM 2.1 segmenter.",
    );
  }
  return tensors;
}
