/**
 * Question templates and reference answers of the shapes world (the same wording as
 * tools/shapes/world.py, which the model was trained on).
 */
import type { Scene, SceneObject, ShapeName, ColourName, PositionName } from "./scene.js";
import { COLOUR_NAMES, SHAPES, positionOf } from "./scene.js";
import type { Mulberry32 } from "./prng.js";

export const QUESTION_TYPES = [
  "colour",
  "shape",
  "what",
  "describe",
  "is_shape",
  "is_colour",
  "where",
  "count",
] as const;
export type QuestionType = (typeof QUESTION_TYPES)[number];

export const TEMPLATES: Record<QuestionType, readonly string[]> = {
  colour: [
    "What colour is the highlighted region?",
    "What color is the highlighted region?",
    "What colour is the object in the region?",
    "What color is this object?",
    "Which colour does the highlighted object have?",
  ],
  shape: [
    "What shape is the highlighted region?",
    "What shape is the object in the region?",
    "What is the shape of this object?",
    "Which shape is highlighted?",
  ],
  what: [
    "What is in the highlighted region?",
    "What is this?",
    "What is the highlighted object?",
    "What is in the region?",
  ],
  describe: [
    "Describe the highlighted region.",
    "Describe the object in the region.",
    "Give a short description of the highlighted object.",
  ],
  is_shape: ["Is it a {shape}?", "Is the highlighted object a {shape}?", "Is this a {shape}?"],
  is_colour: ["Is it {colour}?", "Is the highlighted object {colour}?", "Is this object {colour}?"],
  where: [
    "Where is it?",
    "Where is the highlighted object?",
    "Where is the object in the image?",
    "Where in the image is the highlighted region?",
  ],
  count: [
    "How many objects are in the image?",
    "How many shapes are there?",
    "How many objects can you see?",
    "Count the objects in the image.",
  ],
};

/** What an answer is checked against. `asked` is the shape or colour named in a yes/no question. */
export interface AnswerTruth {
  colour: ColourName;
  shape: ShapeName;
  position: PositionName;
  count: number;
  asked?: string;
}

export function truthFor(scene: Scene, obj: SceneObject, asked?: string): AnswerTruth {
  return {
    colour: obj.colour,
    shape: obj.shape,
    position: positionOf(obj, scene.width, scene.height),
    count: scene.objects.length,
    asked,
  };
}

export function positionPhrase(position: PositionName): string {
  return position === "centre"
    ? "It is in the centre of the image."
    : `It is at the ${position} of the image.`;
}

/** The answer the training data gives (a short sentence). */
export function referenceAnswer(type: QuestionType, truth: AnswerTruth): string {
  switch (type) {
    case "count":
      return `There are ${truth.count} objects.`;
    case "colour":
      return `It is ${truth.colour}.`;
    case "shape":
      return `It is a ${truth.shape}.`;
    case "what":
    case "describe":
      return `It is a ${truth.colour} ${truth.shape}.`;
    case "is_shape":
      return truth.asked === truth.shape ? `Yes, it is a ${truth.shape}.` : `No, it is a ${truth.shape}.`;
    case "is_colour":
      return truth.asked === truth.colour ? `Yes, it is ${truth.colour}.` : `No, it is ${truth.colour}.`;
    case "where":
      return positionPhrase(truth.position);
  }
}

export interface ShapesQuestion {
  type: QuestionType;
  text: string;
  /** The shape or colour a yes/no question names (half the time the true one). */
  asked?: string;
}

/** A question of `type` with a random template; yes/no questions name the truth half the time. */
export function makeQuestion(rng: Mulberry32, type: QuestionType, obj: SceneObject): ShapesQuestion {
  const templates = TEMPLATES[type];
  const template = templates[rng.randInt(0, templates.length - 1)];
  if (type === "is_shape") {
    const asked = rng.nextFloat() < 0.5 ? obj.shape : SHAPES[rng.randInt(0, SHAPES.length - 1)];
    return { type, text: template.replace("{shape}", asked), asked };
  }
  if (type === "is_colour") {
    const asked = rng.nextFloat() < 0.5 ? obj.colour : COLOUR_NAMES[rng.randInt(0, COLOUR_NAMES.length - 1)];
    return { type, text: template.replace("{colour}", asked), asked };
  }
  return { type, text: template };
}
