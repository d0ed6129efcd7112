/**
 * Both published graph signatures through the same SamSegmenter code: a SAM 1-style folder (encoder ->
 * image_embeddings + image_positional_embeddings; decoder without input_boxes; longest side 1024 with
 * padding) and a SAM 2.1-style one (three embeddings, input_boxes, stretched to 1024), each with the
 * real export's names, dtypes and shapes. Their decoders draw a known shape: a disc of radius 40 / 80 /
 * 120 input-frame pixels around the first point, with predicted IoUs 0.5 / 0.9 / 0.7. So where the mask
 * lands on the original image checks the whole chain analytically: coordinate scaling, the padded
 * frame's crop (SAM 1), upsampling to the image's size and the choice of the best candidate.
 * (These stand in for the real exports, which cannot be downloaded here.)
 */
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { OnnxGraphBuilder, writeOnnxModel } from "../src/common/onnx/index.js";
import { SamSegmenter, type SegmenterConfig } from "../src/segmenter/index.js";
import type { Mask } from "../src/vision/index.js";

const S = 1024;
const M = 256;
const RADII = [40, 80, 120];
const SCORES = [0.5, 0.9, 0.7];

function discDecoder(family: "sam1" | "sam2", embeddings: Array<[string, number[]]>) {
  const g = new OnnxGraphBuilder({ graphName: `${family}_disc_decoder` });
  const inputs = embeddings.map(([name, shape]) => g.input(name, "float32", shape));
  const points = g.input("input_points", "float32", [1, 1, "num_points", 2]);
  g.input("input_labels", "int64", [1, 1, "num_points"]);
  if (family === "sam2") g.input("input_boxes", "float32", [1, "num_boxes", 4]);
  // The first point's frame coordinates, [1, 1, 1, 1] each.
  const first = g.node("Slice", [points, g.int64([0]), g.int64([1]), g.int64([2])]);
  const px = g.node("Slice", [first, g.int64([0]), g.int64([1]), g.int64([3])]);
  const py = g.node("Slice", [first, g.int64([1]), g.int64([2]), g.int64([3])]);
  const centres = Float32Array.from({ length: M }, (_, i) => (i + 0.5) * (S / M));
  const gx = g.initializer("gx", centres, [1, 1, 1, M]);
  const gy = g.initializer("gy", centres, [1, 1, M, 1]);
  const dx = g.node("Sub", [gx, px]);
  const dy = g.node("Sub", [gy, py]);
  const d2 = g.node("Add", [g.node("Mul", [dx, dx]), g.node("Mul", [dy, dy])]); // [1, 1, M, M]
  const r2 = g.initializer(
    "r2",
    Float32Array.from(RADII, (r) => r * r),
    [1, 3, 1, 1],
  );
  // Every embedding is read (times zero), as a real decoder reads them.
  let zero = g.scalar(0);
  for (const e of inputs)
    zero = g.node("Add", [zero, g.node("Mul", [g.node("ReduceMean", [e], { keepdims: 0 }), g.scalar(0)])]);
  const logits = g.node("Add", [g.node("Sub", [r2, d2]), zero]); // [1, 3, M, M]
  g.output("iou_scores", "float32", [1, 1, 3], g.initializer("scores", Float32Array.from(SCORES), [1, 1, 3]));
  g.output("pred_masks", "float32", [1, 1, 3, M, M], g.node("Unsqueeze", [logits, g.int64([0])]));
  return g.toModel();
}

function encoder(family: "sam1" | "sam2", embeddings: Array<[string, number[]]>) {
  const g = new OnnxGraphBuilder({ graphName: `${family}_encoder` });
  const x = g.input("pixel_values", "float32", [1, 3, S, S]);
  for (const [name, shape] of embeddings) {
    const side = shape[2];
    const pooled = g.node("AveragePool", [x], {
      kernel_shape: [S / side, S / side],
      strides: [S / side, S / side],
    });
    const w = g.initializer(`${name}_w`, new Float32Array(shape[1] * 3).fill(0.01), [shape[1], 3, 1, 1]);
    g.output(name, "float32", shape, g.node("Conv", [pooled, w]));
  }
  return g.toModel();
}

const SIGNATURES = {
  sam1: [
    ["image_embeddings", [1, 256, 64, 64]],
    ["image_positional_embeddings", [1, 256, 64, 64]],
  ],
  sam2: [
    ["image_embeddings.0", [1, 32, 256, 256]],
    ["image_embeddings.1", [1, 64, 128, 128]],
    ["image_embeddings.2", [1, 256, 64, 64]],
  ],
} satisfies Record<string, Array<[string, number[]]>>;

async function writeFolder(dir: string, family: "sam1" | "sam2"): Promise<void> {
  const config: SegmenterConfig = {
    family,
    imageSize: S,
    resize: family === "sam1" ? "longest-side" : "stretch",
    mean: [0.485, 0.456, 0.406],
    std: [0.229, 0.224, 0.225],
    maskSize: M,
    encoder: "vision_encoder.onnx",
    decoder: "prompt_encoder_mask_decoder.onnx",
  };
  const sig = SIGNATURES[family] as Array<[string, number[]]>;
  const files = [
    ...(await writeOnnxModel(encoder(family, sig), path.join(dir, config.encoder))),
    ...(await writeOnnxModel(discDecoder(family, sig), path.join(dir, config.decoder))),
  ];
  const manifest = {
    kind: "sam-segmenter",
    formatVersion: 1,
    name: `${family}-disc`,
    createdAt: new Date().toISOString(),
    config,
    files: files.map((f) => ({
      path: path.basename(f.path),
      role: f.role,
      bytes: f.bytes,
      sha256: f.sha256,
    })),
  };
  await writeFile(path.join(dir, "manifest.json"), JSON.stringify(manifest));
}

/** Centroid (in continuous coordinates, pixel centres at +0.5) and area of a mask. */
function moments(mask: Mask): { cx: number; cy: number; area: number; width: number; height: number } {
  let n = 0;
  let sx = 0;
  let sy = 0;
  let minX = Infinity;
  let maxX = -Infinity;
  let minY = Infinity;
  let maxY = -Infinity;
  for (let y = 0; y < mask.height; y++) {
    for (let x = 0; x < mask.width; x++) {
      if (!mask.data[y * mask.width + x]) continue;
      n++;
      sx += x + 0.5;
      sy += y + 0.5;
      minX = Math.min(minX, x);
      maxX = Math.max(maxX, x);
      minY = Math.min(minY, y);
      maxY = Math.max(maxY, y);
    }
  }
  return { cx: sx / n, cy: sy / n, area: n, width: maxX - minX + 1, height: maxY - minY + 1 };
}

const image = { width: 300, height: 150, data: new Uint8Array(300 * 150 * 3).fill(128) };
let root: string;
const segmenters: Partial<Record<"sam1" | "sam2", SamSegmenter>> = {};

beforeAll(async () => {
  root = await mkdtemp(path.join(os.tmpdir(), "sam-signatures-"));
  for (const family of ["sam1", "sam2"] as const) {
    const dir = path.join(root, family);
    await writeFolder(dir, family);
    segmenters[family] = await SamSegmenter.load(dir, { device: "cpu", threads: 1 });
  }
}, 120_000);

afterAll(async () => {
  for (const s of Object.values(segmenters)) await s?.dispose();
  await rm(root, { recursive: true, force: true });
});

describe("SAM 1 and SAM 2.1 graph signatures through one code path", () => {
  it("SAM 1: longest side to 1024 and padded; the chosen disc is centred on the click, round, of radius 80 / scale", async () => {
    const sam1 = segmenters.sam1!;
    expect(sam1.acceptsBoxes).toBe(false);
    const result = await sam1.segment(
      image,
      { points: [{ x: 200, y: 100, label: 1 }] },
      { allCandidates: true },
    );
    expect(result.index).toBe(1);
    expect(result.candidates.map((c) => c.score)).toEqual(SCORES.map(Math.fround));
    const scale = S / 300; // 3.413: the 300 x 150 image is 1024 x 512 in the padded frame
    const m = moments(result.mask);
    expect(Math.abs(m.cx - 200)).toBeLessThan(0.5);
    expect(Math.abs(m.cy - 100)).toBeLessThan(0.5);
    const r = 80 / scale;
    expect(m.area / (Math.PI * r * r)).toBeGreaterThan(0.97);
    expect(m.area / (Math.PI * r * r)).toBeLessThan(1.03);
    expect(Math.abs(m.width - m.height)).toBeLessThanOrEqual(1); // round: the crop kept the aspect ratio
    // The three candidates are nested discs of the three radii.
    const areas = result.candidates.map((c) => c.area!);
    expect(areas[0]).toBeLessThan(areas[1]);
    expect(areas[1]).toBeLessThan(areas[2]);
    await expect(sam1.segment(image, { points: [], box: [10, 10, 50, 50] })).rejects.toMatchObject({
      code: "box_invalid",
    });
  });

  it("SAM 2.1: stretched to 1024 x 1024, so the disc becomes an ellipse 80 * W / 1024 by 80 * H / 1024", async () => {
    const sam2 = segmenters.sam2!;
    expect(sam2.acceptsBoxes).toBe(true);
    const result = await sam2.segment(image, {
      points: [{ x: 100, y: 50, label: 1 }],
      box: [40, 20, 180, 120],
    });
    const m = moments(result.mask);
    expect(Math.abs(m.cx - 100)).toBeLessThan(0.5);
    expect(Math.abs(m.cy - 50)).toBeLessThan(0.5);
    const rx = (80 * 300) / S;
    const ry = (80 * 150) / S;
    expect(m.area / (Math.PI * rx * ry)).toBeGreaterThan(0.95);
    expect(m.area / (Math.PI * rx * ry)).toBeLessThan(1.05);
    expect(Math.abs(m.width - 2 * rx)).toBeLessThanOrEqual(2);
    expect(Math.abs(m.height - 2 * ry)).toBeLessThanOrEqual(2);
    // Only the chosen candidate is upsampled unless all are asked for.
    expect(result.candidates.filter((c) => c.mask)).toHaveLength(1);
  });
});
