/**
 * Zero-shot classification on the shapes world (`region-vqa eval-classify`): Alpha-CLIP's own task on
 * the bundled model. Per scene, every object's mask is classified among the 24 colour-shape labels
 * (top-1); one object is also compared with the whole image as the region (the alpha channel must
 * matter, so this should drop towards chance); and each object's label ("the red circle") must pick its
 * own object among the scene's regions (retrieval).
 */
import type { ClassifyResult } from "../pipeline/region-classifier.js";
import type { Region } from "../vision/types.js";
import { encodePng } from "./evaluate.js";
import { sceneRng } from "./prng.js";
import { COLOUR_NAMES, SHAPES, generateScene, renderScene } from "./scene.js";

export interface ClassifyEvalOptions {
  scenes: number;
  seed: number;
  /** Template for the labels; default Alpha-CLIP's "a photo of a {}.". */
  template?: string;
  onScene?: (record: { scene: number; correct: number; regions: number }) => void;
}

export interface ClassifyEvalResult {
  seed: number;
  scenes: number;
  labels: string[];
  /** Top-1 over all object masks. */
  maskTop1: { correct: number; total: number; accuracy: number };
  /** Top-1 with the whole image as the region, scored against one object per scene. */
  wholeImageTop1: { correct: number; total: number; accuracy: number };
  /** Per object: does "the <colour> <shape>" rank that object's region first among the scene's? */
  retrieval: { correct: number; total: number; accuracy: number };
  seconds: number;
}

/** What the evaluation needs of a pipeline (`LocalRegionVqaPipeline` has it). */
export interface Classifies {
  classifyRegions(
    image: Uint8Array,
    regions: Region[],
    labels: unknown,
    options?: { templates?: unknown },
  ): Promise<ClassifyResult>;
}

const EVAL_STREAM = 0x0c1a55e5;
const rate = (correct: number, total: number) => ({ correct, total, accuracy: total ? correct / total : 0 });

export const SHAPES_LABELS: string[] = COLOUR_NAMES.flatMap((c) => SHAPES.map((s) => `${c} ${s}`));

export async function evaluateClassification(
  pipeline: Classifies,
  options: ClassifyEvalOptions,
): Promise<ClassifyEvalResult> {
  const t0 = performance.now();
  const templates = options.template ? [options.template] : undefined;
  let maskCorrect = 0;
  let maskTotal = 0;
  let wholeCorrect = 0;
  let retrievalCorrect = 0;
  let retrievalTotal = 0;
  for (let index = 0; index < options.scenes; index++) {
    const scene = generateScene(options.seed, index);
    const { image, masks } = renderScene(scene);
    const png = await encodePng(image);
    const truth = scene.objects.map((o) => `${o.colour} ${o.shape}`);
    const regions: Region[] = masks.map((mask) => ({ kind: "mask", mask }));
    const result = await pipeline.classifyRegions(png, regions, SHAPES_LABELS, { templates });
    let correct = 0;
    result.regions.forEach((r) => {
      if (r.labels[0].label === truth[r.index]) correct++;
    });
    maskCorrect += correct;
    maskTotal += regions.length;

    const rng = sceneRng((options.seed ^ EVAL_STREAM) >>> 0, index);
    const k = rng.randInt(0, scene.objects.length - 1);
    const whole = await pipeline.classifyRegions(png, [{ kind: "whole" }], SHAPES_LABELS, { templates });
    if (whole.regions[0].labels[0].label === truth[k]) wholeCorrect++;

    // Retrieval: the scene's own labels against its regions, "the <label>." as the text.
    const retrieval = await pipeline.classifyRegions(png, regions, truth, { templates: ["the {}."] });
    retrieval.labels.forEach((l, j) => {
      if (l.regions[0].index === j) retrievalCorrect++;
    });
    retrievalTotal += truth.length;
    options.onScene?.({ scene: index, correct, regions: regions.length });
  }
  return {
    seed: options.seed,
    scenes: options.scenes,
    labels: SHAPES_LABELS,
    maskTop1: rate(maskCorrect, maskTotal),
    wholeImageTop1: rate(wholeCorrect, options.scenes),
    retrieval: rate(retrievalCorrect, retrievalTotal),
    seconds: (performance.now() - t0) / 1000,
  };
}
