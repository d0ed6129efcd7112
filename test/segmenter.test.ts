/**
 * The segmenter stage against reference data made by PyTorch and Pillow
 * (test/fixtures/golden/mini-sam, tools/segmenter/make_fixture.py): Pillow-exact BILINEAR resizing,
 * PyTorch-exact bilinear mask upsampling, the worked coordinate examples, and the miniature SAM
 * graphs rebuilt by src/segmenter from a PyTorch checkpoint, run in ONNX Runtime.
 */
import { createHash } from "node:crypto";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { OnnxSession, type WireTensor } from "../src/common/ort/index.js";
import {
  SHAPES_SEGMENTER_ARCHITECTURE,
  SamSegmenter,
  encodePrompt,
  miniSamConfig,
  preprocessForSam,
  resizeBilinear,
  samFrame,
  writeMiniSamFolder,
  type SegmenterConfig,
} from "../src/segmenter/index.js";
import { generateScene, renderScene } from "../src/shapes/index.js";
import { openStateDict, pillowResize, type PointPrompt } from "../src/vision/index.js";
import { goldenDir } from "./support/tiny-models.js";

const fixtureDir = path.join(goldenDir, "mini-sam");

interface Summary {
  shape: number[];
  sum: number;
  abs_sum: number;
  samples: number[];
}
interface Cases {
  forward: {
    scene: { seed: number; index: number };
    pixel_values: Summary;
    image_embeddings: Summary[];
    prompts: Record<
      string,
      {
        points: [number, number, number][];
        box: [number, number, number, number] | null;
        iou_scores: number[];
        object_score_logits: number[];
        pred_masks: Summary;
      }
    >;
  };
  pillow_bilinear: { scene: { seed: number; index: number }; size: [number, number]; sha256: string }[];
  interpolate: {
    input: number[];
    side: number;
    outputs: { height: number; width: number; values: number[] }[];
  };
}

let cases: Cases;
beforeAll(async () => {
  cases = JSON.parse(await readFile(path.join(fixtureDir, "cases.json"), "utf8")) as Cases;
});

function expectSummary(actual: Float32Array, dims: number[], expected: Summary, tol: number): void {
  expect(dims).toEqual(expected.shape);
  let sum = 0;
  let abs = 0;
  for (const v of actual) {
    sum += v;
    abs += Math.abs(v);
  }
  expect(Math.abs(abs - expected.abs_sum)).toBeLessThan(tol * Math.max(1, expected.abs_sum));
  expect(Math.abs(sum - expected.sum)).toBeLessThan(tol * Math.max(1, expected.abs_sum));
  const samples = expected.samples.map((_, i) => actual[i * 97]);
  samples.forEach((v, i) =>
    expect(Math.abs(v - expected.samples[i])).toBeLessThan(1e-4 + 1e-4 * Math.abs(v)),
  );
}

describe("SAM preprocessing and post-processing", () => {
  it("resizes like Pillow's BILINEAR, byte for byte", () => {
    for (const c of cases.pillow_bilinear) {
      const { image } = renderScene(generateScene(c.scene.seed, c.scene.index));
      const out = pillowResize(image.data, image.width, image.height, 3, c.size[0], c.size[1], "bilinear");
      expect(createHash("sha256").update(out).digest("hex"), `${c.size}`).toBe(c.sha256);
    }
  });

  it("upsamples and downsamples logits like torch's bilinear interpolate (align_corners=False)", () => {
    const { input, side, outputs } = cases.interpolate;
    for (const o of outputs) {
      const got = resizeBilinear(
        Float32Array.from(input),
        side,
        { left: 0, top: 0, width: side, height: side },
        o.width,
        o.height,
      );
      let worst = 0;
      o.values.forEach((v, i) => (worst = Math.max(worst, Math.abs(v - got[i]))));
      expect(worst, `${o.height}x${o.width}`).toBeLessThan(1e-5);
    }
  });

  it("maps image pixels into the input frame as the reference processors do (worked examples)", () => {
    const sam2 = { ...miniSamConfig(SHAPES_SEGMENTER_ARCHITECTURE), imageSize: 1024 } as SegmenterConfig;
    const sam1: SegmenterConfig = { ...sam2, family: "sam1", resize: "longest-side" };
    // SAM 2.1: a 200 x 100 image is stretched to 1024 x 1024: x * 1024/200 = 5.12 x, y * 10.24.
    const f2 = samFrame(200, 100, sam2);
    expect(f2).toEqual({ width: 200, height: 100, resizedWidth: 1024, resizedHeight: 1024, inputSize: 1024 });
    const t2 = encodePrompt({ points: [{ x: 50, y: 25, label: 1 }], box: [10, 20, 110, 70] }, f2, true);
    expect(Array.from(t2.input_points.data as Float32Array)).toEqual([256, 256]);
    expect(Array.from(t2.input_boxes!.data as Float32Array)).toEqual(
      [51.2, 204.8, 563.2, 716.8].map(Math.fround),
    );
    expect(t2.input_labels.dims).toEqual([1, 1, 1]);
    // SAM 1: longest side to 1024, 333 x 500 -> scale 2.048, 681.98 + 0.5 -> 682 wide, 1024 high.
    const f1 = samFrame(333, 500, sam1);
    expect([f1.resizedWidth, f1.resizedHeight]).toEqual([682, 1024]);
    const t1 = encodePrompt({ points: [{ x: 333, y: 250, label: 0 }] }, f1, false);
    expect(Array.from(t1.input_points.data as Float32Array)).toEqual([682, 512]);
    expect(t1.input_labels.data).toEqual(BigInt64Array.of(0n));
    expect(t1.input_boxes).toBeUndefined();
    // A box-only prompt sends empty point tensors and one box; no box sends a [1, 0, 4] box tensor.
    const boxOnly = encodePrompt({ points: [], box: [0, 0, 100, 50] }, f2, true);
    expect(boxOnly.input_points.dims).toEqual([1, 1, 0, 2]);
    expect(encodePrompt({ points: [{ x: 1, y: 1, label: 1 }] }, f2, true).input_boxes!.dims).toEqual([
      1, 0, 4,
    ]);
    expect(() => encodePrompt({ points: [], box: [0, 0, 1, 1] }, f1, false)).toThrow(/takes no box/);
  });

  it("pads SAM 1 frames with zeros after normalising", () => {
    const config: SegmenterConfig = {
      ...miniSamConfig(SHAPES_SEGMENTER_ARCHITECTURE),
      family: "sam1",
      resize: "longest-side",
      imageSize: 64,
    };
    const image = { width: 40, height: 20, data: new Uint8Array(40 * 20 * 3).fill(255) };
    const { pixelValues, frame } = preprocessForSam(image, config);
    expect([frame.resizedWidth, frame.resizedHeight]).toEqual([64, 32]);
    const at = (c: number, y: number, x: number) => pixelValues.data[c * 64 * 64 + y * 64 + x];
    expect(at(0, 0, 0)).toBeCloseTo((1 - 0.485) / 0.229, 5);
    expect(at(2, 31, 63)).toBeCloseTo((1 - 0.406) / 0.225, 5);
    expect(at(0, 32, 0)).toBe(0);
    expect(at(1, 63, 63)).toBe(0);
  });
});

describe("miniature SAM graphs rebuilt from a PyTorch checkpoint", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "mini-sam-"));
    const weights = openStateDict(path.join(fixtureDir, "mini-sam-init.pth"));
    try {
      await writeMiniSamFolder(dir, SHAPES_SEGMENTER_ARCHITECTURE, weights, { name: "mini-sam-init" });
    } finally {
      weights.close();
    }
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("computes PyTorch's encoder and decoder outputs for every prompt form", async () => {
    const config = miniSamConfig(SHAPES_SEGMENTER_ARCHITECTURE);
    const { seed, index } = cases.forward.scene;
    const { image } = renderScene(generateScene(seed, index));
    const { pixelValues, frame } = preprocessForSam(image, config);
    expectSummary(pixelValues.data, pixelValues.shape, cases.forward.pixel_values, 1e-5);
    const encoder = await OnnxSession.open(path.join(dir, config.encoder), {
      label: "test encoder",
      device: "cpu",
      threads: 1,
      inWorker: false,
    });
    const decoder = await OnnxSession.open(path.join(dir, config.decoder), {
      label: "test decoder",
      device: "cpu",
      threads: 1,
      inWorker: false,
    });
    try {
      expect(decoder.inputNames).toEqual([
        "image_embeddings.0",
        "image_embeddings.1",
        "image_embeddings.2",
        "input_points",
        "input_labels",
        "input_boxes",
      ]);
      expect(decoder.outputNames).toEqual(["iou_scores", "pred_masks", "object_score_logits"]);
      const emb = await encoder.run({ pixel_values: { data: pixelValues.data, dims: pixelValues.shape } });
      expect(encoder.outputNames).toEqual(["image_embeddings.0", "image_embeddings.1", "image_embeddings.2"]);
      encoder.outputNames.forEach((name, i) =>
        expectSummary(
          emb[name].data as Float32Array,
          emb[name].dims,
          cases.forward.image_embeddings[i],
          1e-4,
        ),
      );
      for (const [name, p] of Object.entries(cases.forward.prompts)) {
        const points = p.points.map(([x, y, label]) => ({ x, y, label: label as PointPrompt["label"] }));
        const tensors = encodePrompt({ points, box: p.box ?? undefined }, frame, true);
        const feeds: Record<string, WireTensor> = { ...emb, ...tensors } as Record<string, WireTensor>;
        const out = await decoder.run(feeds);
        Array.from(out.iou_scores.data as Float32Array).forEach((v, i) =>
          expect(v, `${name} iou ${i}`).toBeCloseTo(p.iou_scores[i], 4),
        );
        expect((out.object_score_logits.data as Float32Array)[0]).toBeCloseTo(p.object_score_logits[0], 4);
        expectSummary(out.pred_masks.data as Float32Array, out.pred_masks.dims.slice(1), p.pred_masks, 1e-4);
      }
    } finally {
      await encoder.dispose();
      await decoder.dispose();
    }
  });

  it("an image evicted from the cache is encoded again, and its clicks still work", async () => {
    const probe = await SamSegmenter.load(dir, { device: "cpu", threads: 1 });
    const scene = (i: number) => renderScene(generateScene(1000, i)).image;
    const click = { points: [{ x: 100, y: 80, label: 1 as const }] };
    const outcome = (r: unknown): string =>
      r instanceof Error ? String((r as { code?: string }).code) : "mask";
    let bytesPerImage: number;
    try {
      await probe.segment(scene(3), click).catch(() => undefined);
      bytesPerImage = probe.cacheStats().bytes;
    } finally {
      await probe.dispose();
    }
    // Room for one image: every other image evicts the one before.
    const segmenter = await SamSegmenter.load(dir, { device: "cpu", threads: 1, cacheBytes: bytesPerImage });
    try {
      const first: string[] = [];
      for (const i of [3, 4, 3, 4, 3])
        first.push(outcome(await segmenter.segment(scene(i), click).catch((e) => e)));
      const stats = segmenter.cacheStats();
      expect(stats.misses).toBe(5);
      expect(stats.evictions).toBe(4);
      expect(first.every((o) => o === "mask" || o === "segment_empty")).toBe(true);
      // Same image, same click, same outcome after its embeddings were dropped and made again.
      expect(first[0]).toBe(first[2]);
      expect(first[2]).toBe(first[4]);
    } finally {
      await segmenter.dispose();
    }
  });

  it("SamSegmenter encodes an image once and decodes each further click from the cache", async () => {
    const segmenter = await SamSegmenter.load(dir, { device: "cpu", threads: 1 });
    try {
      const { image } = renderScene(generateScene(1000, 3));
      const first = await segmenter
        .segment(image, { points: [{ x: 100, y: 80, label: 1 }] })
        .catch((e: unknown) => e);
      const second = await segmenter
        .segment(image, { points: [{ x: 30, y: 30, label: 1 }] })
        .catch((e: unknown) => e);
      const stats = segmenter.cacheStats();
      expect(stats.misses).toBe(1);
      expect(stats.hits).toBe(1);
      expect(stats.entries).toBe(1);
      // The embeddings crossed to the decoder's worker once; each click sent only its prompt.
      const t = segmenter.decoderTransfers();
      expect(t.runs).toBe(2);
      expect(t.keptBytes).toBe(stats.bytes);
      expect(t.inputBytes).toBeLessThan(100);
      // An untrained model may find nothing; either way the prompt reached the decoder.
      for (const r of [first, second]) {
        if (r instanceof Error) expect((r as { code?: string }).code).toBe("segment_empty");
        else expect((r as { candidates: unknown[] }).candidates).toHaveLength(3);
      }
    } finally {
      await segmenter.dispose();
    }
  });
});
