/**
 * The bundled segmenter and CLIP text tower on ONNX Runtime's WebGPU provider (Mesa's lavapipe here
 * and in CI: a software adapter, so this checks the GPU code path, not its speed), against the same
 * models on the CPU provider. test/webgpu-pipeline.test.ts covers the vision tower and the LLM.
 */
import path from "node:path";
import { afterAll, beforeAll, expect, it } from "vitest";
import { SamSegmenter } from "../src/segmenter/index.js";
import { maskIou } from "../src/shapes/index.js";
import { ClipTextEncoder, ClipTokenizer } from "../src/text/index.js";
import { describeWithGpu } from "./support/gpu.js";
import {
  pointScene,
  pointSceneImage,
  pointSceneMasks,
  redCentre,
  blueCentre,
} from "./support/point-scene.js";
import { repoRoot } from "./support/tiny-models.js";

const bundled = path.join(repoRoot, "models", "shapes");

describeWithGpu("WebGPU: the bundled segmenter and text tower", () => {
  const segmenters: Partial<Record<"webgpu" | "cpu", SamSegmenter>> = {};
  const texts: Partial<Record<"webgpu" | "cpu", ClipTextEncoder>> = {};

  beforeAll(async () => {
    for (const device of ["webgpu", "cpu"] as const) {
      segmenters[device] = await SamSegmenter.load(path.join(bundled, "segmenter"), { device, threads: 1 });
      texts[device] = await ClipTextEncoder.load(path.join(bundled, "text"), { device, threads: 1 });
    }
  }, 300_000);
  afterAll(async () => {
    for (const s of Object.values(segmenters)) await s?.dispose();
    for (const t of Object.values(texts)) await t?.dispose();
  });

  it("runs where it was asked to", () => {
    expect(segmenters.webgpu!.device).toMatch(/^webgpu/);
    expect(texts.webgpu!.device).toMatch(/^webgpu/);
  });

  it("segments a click as on the CPU", async () => {
    expect(pointScene.objects.map((o) => o.shape)).toEqual(["square", "circle"]);
    for (const [click, truth] of [
      [redCentre, pointSceneMasks[0]],
      [blueCentre, pointSceneMasks[1]],
    ] as const) {
      const prompt = { points: [{ x: click[0], y: click[1], label: 1 as const }] };
      const gpu = await segmenters.webgpu!.segment(pointSceneImage, prompt);
      const cpu = await segmenters.cpu!.segment(pointSceneImage, prompt);
      expect(gpu.index).toBe(cpu.index);
      expect(Math.abs(gpu.score - cpu.score)).toBeLessThan(1e-2);
      expect(maskIou(gpu.mask, cpu.mask)).toBeGreaterThan(0.99);
      expect(maskIou(gpu.mask, truth)).toBeGreaterThan(0.9);
    }
  }, 300_000);

  it("encodes labels as on the CPU", async () => {
    const tokenizer = await ClipTokenizer.load();
    const ids = tokenizer.tokenize([
      "a photo of a red square.",
      "a photo of a blue circle.",
      "a yellow star",
    ]);
    const [gpu, cpu] = [await texts.webgpu!.encode(ids), await texts.cpu!.encode(ids)];
    expect(gpu.shape).toEqual(cpu.shape);
    const scale = Math.max(...Array.from(cpu.data, Math.abs));
    let worst = 0;
    gpu.data.forEach((v, i) => (worst = Math.max(worst, Math.abs(v - cpu.data[i]))));
    expect(worst / scale).toBeLessThan(1e-3);
  }, 300_000);
});
