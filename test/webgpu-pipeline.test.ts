/**
 * The bundled model with its vision stage on WebGPU answers what it answers on the CPU: 50 fresh
 * `eval-shapes` scenes (every question type) through both pipelines, and the HTTP server serving from
 * the WebGPU pipeline. Here and in CI the adapter is Mesa's software lavapipe (correctness, not speed).
 */
import { afterAll, beforeAll, expect, it } from "vitest";
import { resolveModelOptions } from "../src/models/index.js";
import { createPipeline, type LocalRegionVqaPipeline } from "../src/pipeline/index.js";
import { evaluateShapes, type ShapesEvalRecord } from "../src/shapes/index.js";
import { describeWithGpu, gpuAdapter } from "./support/gpu.js";
import { json, makeImage, postJson, startServer } from "./support/server.js";
import { readFileSync } from "node:fs";
import path from "node:path";
import { repoRoot } from "./support/tiny-models.js";

const SCENES = 50;
const SEED = 3000;

describeWithGpu("the bundled model on WebGPU", () => {
  const pipelines: Partial<Record<"cpu" | "webgpu", LocalRegionVqaPipeline>> = {};

  beforeAll(async () => {
    for (const device of ["cpu", "webgpu"] as const) {
      // Vision + LLM only: on lavapipe every extra graph (the segmenter, the text tower) costs its own
      // shader compilation, and this suite is about the answering path.
      const {
        segmenter: _segmenter,
        text: _text,
        ...models
      } = await resolveModelOptions({
        device,
        visionThreads: 1,
        llmThreads: 1,
      });
      pipelines[device] = await createPipeline({ ...models, maxConversations: 2 });
    }
  });
  afterAll(async () => {
    for (const p of Object.values(pipelines)) await p?.dispose();
  });

  it(`answers ${SCENES} eval-shapes scenes as the CPU does (>= 98 % of questions the same)`, async () => {
    const answers = async (device: "cpu" | "webgpu") => {
      const records: ShapesEvalRecord[] = [];
      await evaluateShapes(pipelines[device]!, {
        scenes: SCENES,
        seed: SEED,
        onAnswer: (r) => records.push(r),
      });
      return records;
    };
    // Both at once: the LLM (CPU) of one overlaps the other's vision work.
    const [cpu, gpu] = await Promise.all([answers("cpu"), answers("webgpu")]);
    expect(gpu.length).toBe(cpu.length);
    expect(cpu.length).toBeGreaterThanOrEqual(SCENES * 8);
    const key = (r: ShapesEvalRecord) => `${r.scene}|${r.category}|${r.question}`;
    const onCpu = new Map(cpu.map((r) => [key(r), r.answer]));
    const same = gpu.filter((r) => onCpu.get(key(r)) === r.answer).length;
    const correct = (rs: ShapesEvalRecord[]) => rs.filter((r) => r.correct).length / rs.length;
    console.info(
      `webgpu vs cpu: ${same}/${gpu.length} answers the same; accuracy cpu ${(100 * correct(cpu)).toFixed(1)} %, webgpu ${(100 * correct(gpu)).toFixed(1)} %`,
    );
    expect(same / gpu.length).toBeGreaterThanOrEqual(0.98);
    // About 100-115 s on this 2-core machine: llvmpipe runs the vision graph in software.
  }, 300_000);

  it("batches concurrent requests' regions into shared encoder runs (on by default on a GPU), same embeddings", async () => {
    const gpu = pipelines.webgpu!;
    const images = await Promise.all([40, 48, 56, 64, 72, 80].map((w) => makeImage(w, 40)));
    const region = [{ kind: "box" as const, box: [2, 2, 30, 30] as [number, number, number, number] }];
    gpu.clearVisionCache();
    const before = gpu.stats().encoder!;
    const together = await Promise.all(images.map((png) => gpu.embedRegions(png, region)));
    const after = gpu.stats().encoder!;
    expect(after.requests - before.requests).toBe(images.length);
    expect(after.runs - before.runs).toBeLessThan(images.length);
    gpu.clearVisionCache();
    for (let i = 0; i < images.length; i++) {
      const [alone] = await gpu.embedRegions(images[i], region);
      let worst = 0;
      let scale = 0;
      alone.data.forEach((v, k) => {
        worst = Math.max(worst, Math.abs(v - together[i][0].data[k]));
        scale = Math.max(scale, Math.abs(v));
      });
      expect(worst / scale).toBeLessThan(1e-3);
    }
  });

  it("serves answers from the WebGPU pipeline over HTTP", async () => {
    const server = await startServer(pipelines.webgpu!);
    try {
      const image = readFileSync(path.join(repoRoot, "examples/shapes.png")).toString("base64");
      const r = await postJson(server, "/v1/regions/ask", {
        image,
        box: [128, 15, 210, 97],
        question: "What colour is the highlighted region?",
      });
      expect(r.status).toBe(200);
      expect((await json(r)).answer.toLowerCase()).toMatch(/\bred\b/);
      const ready = await json(await fetch(`${server.url}/readyz`));
      expect(ready.devices.vision).toBe(`webgpu (${gpuAdapter!.name})`);
    } finally {
      await server.close();
    }
  });
});
