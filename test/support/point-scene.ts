/** The picture the point-region tests click on, and the bundled model with its segmenter. */
import { expect } from "vitest";
import { resolveModelOptions } from "../../src/models/index.js";
import {
  createPipeline,
  type LocalRegionVqaPipeline,
  type PipelineOptions,
} from "../../src/pipeline/index.js";
import { renderScene, type Scene } from "../../src/shapes/index.js";

/** A shapes-world picture: a red square at the left, a blue circle at the right. */
export const pointScene: Scene = {
  seed: 0,
  index: 0,
  width: 240,
  height: 180,
  objects: [
    { shape: "square", colour: "red", x0: 30, y0: 50, size: 60 },
    { shape: "circle", colour: "blue", x0: 150, y0: 60, size: 64 },
  ],
};
export const { image: pointSceneImage, masks: pointSceneMasks } = renderScene(pointScene);
export const redCentre: [number, number] = [60, 80];
export const blueCentre: [number, number] = [182, 92];
export const background: [number, number] = [8, 8];

/** The bundled model (models/shapes) with its segmenter, on the CPU with one thread per engine. */
export async function bundledPipelineWithSegmenter(
  extra: Partial<PipelineOptions> = {},
): Promise<LocalRegionVqaPipeline> {
  const models = await resolveModelOptions({ visionThreads: 1, llmThreads: 1, device: "cpu", gpu: false });
  expect(models.segmenter).toMatch(/models\/shapes\/segmenter$/);
  return createPipeline({ ...models, ...extra });
}
