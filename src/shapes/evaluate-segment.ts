/**
 * Scores a segmenter on the shapes world (`region-vqa eval-segment`): for each scene one object, and
 * its mask made from one click at a random interior pixel, from the object's box, and from two clicks.
 * The measure is IoU with the object's true mask at the image's own resolution; an empty mask (the
 * segmenter found nothing) scores 0.
 */
import { isRegionVqaError } from "../common/errors.js";
import type { SegmentPrompt, SegmentResult } from "../segmenter/types.js";
import type { Mask, PointPrompt, RgbImage } from "../vision/types.js";
import { sceneRng, type Mulberry32 } from "./prng.js";
import { generateScene, objectBox, renderScene, type ShapeName } from "./scene.js";

export const SEGMENT_PROMPT_KINDS = ["one_click", "box", "two_clicks"] as const;
export type SegmentPromptKind = (typeof SEGMENT_PROMPT_KINDS)[number];

export interface SegmentEvalOptions {
  scenes: number;
  seed: number;
  onScene?: (record: SegmentEvalRecord) => void;
}

export interface SegmentEvalRecord {
  scene: number;
  shape: ShapeName;
  iou: Record<SegmentPromptKind, number>;
}

export interface IouSummary {
  meanIou: number;
  /** Share of prompts whose mask reaches IoU 0.9. */
  atLeast90: number;
  minIou: number;
  count: number;
}

export interface SegmentEvalResult {
  seed: number;
  scenes: number;
  perPrompt: Record<SegmentPromptKind, IouSummary>;
  /** One-click IoU per shape. */
  oneClickPerShape: Record<string, IouSummary>;
  seconds: number;
}

/** What the evaluation needs of a segmenter (`SamSegmenter` has it). */
export interface Segments {
  segment(image: RgbImage, prompt: SegmentPrompt): Promise<SegmentResult>;
}

/** The evaluation's choices come from their own stream, apart from the scene's. */
const SEGMENT_EVAL_STREAM = 0x5e9a3e47;

export function maskIou(a: Mask, b: Mask): number {
  let inter = 0;
  let union = 0;
  for (let i = 0; i < a.data.length; i++) {
    const x = a.data[i] !== 0;
    const y = b.data[i] !== 0;
    if (x && y) inter++;
    if (x || y) union++;
  }
  return union === 0 ? 1 : inter / union;
}

function randomInside(rng: Mulberry32, mask: Mask): PointPrompt {
  const inside: number[] = [];
  for (let i = 0; i < mask.data.length; i++) if (mask.data[i]) inside.push(i);
  const i = inside[rng.randInt(0, inside.length - 1)];
  return { x: i % mask.width, y: Math.floor(i / mask.width), label: 1 };
}

function summarise(values: number[]): IouSummary {
  const n = values.length;
  return {
    meanIou: n ? values.reduce((a, b) => a + b, 0) / n : 0,
    atLeast90: n ? values.filter((v) => v >= 0.9).length / n : 0,
    minIou: n ? Math.min(...values) : 0,
    count: n,
  };
}

export async function evaluateSegmentation(
  segmenter: Segments,
  options: SegmentEvalOptions,
): Promise<SegmentEvalResult> {
  const t0 = performance.now();
  const values: Record<SegmentPromptKind, number[]> = { one_click: [], box: [], two_clicks: [] };
  const perShape: Record<string, number[]> = {};
  for (let index = 0; index < options.scenes; index++) {
    const scene = generateScene(options.seed, index);
    const { image, masks } = renderScene(scene);
    const rng = sceneRng((options.seed ^ SEGMENT_EVAL_STREAM) >>> 0, index);
    const k = rng.randInt(0, scene.objects.length - 1);
    const truth = masks[k];
    const prompts: Record<SegmentPromptKind, SegmentPrompt> = {
      one_click: { points: [randomInside(rng, truth)] },
      box: { points: [], box: objectBox(scene.objects[k]) },
      two_clicks: { points: [randomInside(rng, truth), randomInside(rng, truth)] },
    };
    const iou = {} as Record<SegmentPromptKind, number>;
    for (const kind of SEGMENT_PROMPT_KINDS) {
      try {
        iou[kind] = maskIou((await segmenter.segment(image, prompts[kind])).mask, truth);
      } catch (err) {
        if (!(isRegionVqaError(err) && err.code === "segment_empty")) throw err;
        iou[kind] = 0;
      }
      values[kind].push(iou[kind]);
    }
    const shape = scene.objects[k].shape;
    (perShape[shape] ??= []).push(iou.one_click);
    options.onScene?.({ scene: index, shape, iou });
  }
  return {
    seed: options.seed,
    scenes: options.scenes,
    perPrompt: {
      one_click: summarise(values.one_click),
      box: summarise(values.box),
      two_clicks: summarise(values.two_clicks),
    },
    oneClickPerShape: Object.fromEntries(Object.entries(perShape).map(([s, v]) => [s, summarise(v)])),
    seconds: (performance.now() - t0) / 1000,
  };
}
