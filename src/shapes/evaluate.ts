/**
 * Asks the shapes world's questions through a RegionVqaPipeline and scores the answers: the measure of
 * whether the bundled model really answers region questions (used by `region-vqa eval-shapes`).
 */
import sharp from "sharp";
import type { RegionVqaPipeline } from "../pipeline/types.js";
import type { Region } from "../vision/types.js";
import { checkAnswer } from "./check.js";
import { sceneRng } from "./prng.js";
import { QUESTION_TYPES, makeQuestion, truthFor, type QuestionType } from "./questions.js";
import { generateScene, objectBox, renderScene } from "./scene.js";

/** Question types plus "colour_whole": the colour question with the region replaced by the whole image. */
export type EvalCategory = QuestionType | "colour_whole";

export interface ShapesEvalOptions {
  scenes: number;
  seed: number;
  /** Object regions as masks (default) or as boxes. */
  regionKind?: "mask" | "box";
  types?: readonly QuestionType[];
  /** Also ask the colour question about the whole image (shows whether the answer follows the alpha). */
  wholeImageColour?: boolean;
  maxTokens?: number;
  onAnswer?: (record: ShapesEvalRecord) => void;
}

export interface ShapesEvalRecord {
  scene: number;
  category: EvalCategory;
  question: string;
  answer: string;
  correct: boolean;
}

export interface ShapesEvalResult {
  seed: number;
  scenes: number;
  perCategory: Record<string, { correct: number; total: number; accuracy: number }>;
  seconds: number;
}

/** Choices of the evaluation (object, templates) come from their own stream, apart from the scene's. */
const EVAL_STREAM = 0x5eed5eed;

export async function encodePng(image: {
  width: number;
  height: number;
  data: Uint8Array;
}): Promise<Uint8Array> {
  const png = await sharp(Buffer.from(image.data), {
    raw: { width: image.width, height: image.height, channels: 3 },
  })
    .png()
    .toBuffer();
  return new Uint8Array(png);
}

export async function evaluateShapes(
  pipeline: RegionVqaPipeline,
  options: ShapesEvalOptions,
): Promise<ShapesEvalResult> {
  const started = performance.now();
  const types = options.types ?? QUESTION_TYPES;
  const tally = new Map<string, { correct: number; total: number }>();
  for (let i = 0; i < options.scenes; i++) {
    const scene = generateScene(options.seed, i);
    if (scene.objects.length === 0) continue;
    const { image, masks } = renderScene(scene);
    const png = await encodePng(image);
    const rng = sceneRng((options.seed ^ EVAL_STREAM) >>> 0, i);
    const k = rng.randInt(0, scene.objects.length - 1);
    const obj = scene.objects[k];
    const objectRegion: Region =
      options.regionKind === "box" ? { kind: "box", box: objectBox(obj) } : { kind: "mask", mask: masks[k] };
    const asks: Array<{ category: EvalCategory; type: QuestionType; region: Region }> = types.map((type) => ({
      category: type,
      type,
      region: type === "count" ? { kind: "whole" } : objectRegion,
    }));
    if (options.wholeImageColour)
      asks.push({ category: "colour_whole", type: "colour", region: { kind: "whole" } });
    for (const ask of asks) {
      const question = makeQuestion(rng, ask.type, obj);
      const truth = truthFor(scene, obj, question.asked);
      // One conversation per question: the model was trained on single-turn prompts.
      const conversation = await pipeline.openConversation(png, ask.region);
      let answer: string;
      try {
        const result = await conversation.ask(question.text, {
          temperature: 0,
          maxTokens: options.maxTokens ?? 24,
        }).result;
        answer = result.text.trim();
      } finally {
        await conversation.dispose();
      }
      const correct = checkAnswer(ask.type, answer, truth);
      const t = tally.get(ask.category) ?? { correct: 0, total: 0 };
      t.total++;
      if (correct) t.correct++;
      tally.set(ask.category, t);
      options.onAnswer?.({ scene: i, category: ask.category, question: question.text, answer, correct });
    }
  }
  const perCategory: ShapesEvalResult["perCategory"] = {};
  for (const [category, t] of tally)
    perCategory[category] = { ...t, accuracy: t.total ? t.correct / t.total : 0 };
  return {
    seed: options.seed,
    scenes: options.scenes,
    perCategory,
    seconds: (performance.now() - started) / 1000,
  };
}
