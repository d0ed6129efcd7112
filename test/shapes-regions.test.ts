/**
 * The alpha channel decides the answer: on one image, each object's mask (and box) gets that object's
 * colour and shape, from the bundled model through the real pipeline (ONNX Runtime + llama.cpp), and
 * captions of all objects of one image come from one batched encoder run.
 */
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { resolveModelOptions } from "../src/models/index.js";
import { createPipeline, type LocalRegionVqaPipeline, type PipelineStage } from "../src/pipeline/index.js";
import { encodePng, generateScene, objectBox, renderScene } from "../src/shapes/index.js";

describe("bundled model: the region decides the answer", () => {
  let pipeline: LocalRegionVqaPipeline;
  const stages: PipelineStage[] = [];

  beforeAll(async () => {
    const models = await resolveModelOptions({ visionThreads: 1, llmThreads: 1, device: "cpu" });
    expect(models.vision).toBe(path.resolve("models/shapes/vision"));
    pipeline = await createPipeline({ ...models, maxConversations: 4, onStage: (s) => stages.push(s) });
  }, 120_000);
  afterAll(async () => {
    await pipeline?.dispose();
  });

  // Fresh scenes (seeds unlike training's), each with 3 or 4 objects.
  const scenes = [1, 2, 3, 4, 5, 6, 7, 8]
    .map((i) => generateScene(424242, i))
    .filter((s) => s.objects.length >= 3)
    .slice(0, 2);

  it("answers about each object of one image when its mask is the region", async () => {
    expect(scenes.length).toBe(2);
    let right = 0;
    let total = 0;
    for (const scene of scenes) {
      const { image, masks } = renderScene(scene);
      const png = await encodePng(image);
      for (let k = 0; k < scene.objects.length; k++) {
        const obj = scene.objects[k];
        const conversation = await pipeline.openConversation(png, { kind: "mask", mask: masks[k] });
        const answer = await conversation.ask("What is in the highlighted region?", {
          temperature: 0,
          maxTokens: 16,
        }).result;
        await conversation.dispose();
        total++;
        if (answer.text.includes(obj.colour) && answer.text.includes(obj.shape)) right++;
      }
    }
    // Objects of one image differ in colour or shape, so one fixed answer cannot pass this.
    expect(right).toBeGreaterThanOrEqual(total - 1);
  }, 180_000);

  it("captions every object's box in one encoder batch", async () => {
    const scene = scenes[0];
    const png = await encodePng(renderScene(scene).image);
    const regions = scene.objects.map((o) => ({ kind: "box" as const, box: objectBox(o) }));
    stages.length = 0;
    const captions = await pipeline.captionRegions(png, regions, { temperature: 0, maxTokens: 16 });
    expect(stages.filter((s) => s === "encode")).toHaveLength(1);
    const right = captions.filter(
      (c, k) => c.text.includes(scene.objects[k].colour) && c.text.includes(scene.objects[k].shape),
    ).length;
    expect(right).toBeGreaterThanOrEqual(scene.objects.length - 1);
  }, 180_000);
});
