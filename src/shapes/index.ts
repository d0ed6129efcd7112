export { Mulberry32, sceneRng } from "./prng.js";
export {
  BACKGROUND,
  COLOURS,
  COLOUR_NAMES,
  POSITIONS,
  SHAPES,
  generateScene,
  objectBox,
  objectMask,
  positionOf,
  renderScene,
} from "./scene.js";
export type { ColourName, PositionName, RenderedScene, Scene, SceneObject, ShapeName } from "./scene.js";
export {
  QUESTION_TYPES,
  TEMPLATES,
  makeQuestion,
  positionPhrase,
  referenceAnswer,
  truthFor,
} from "./questions.js";
export type { AnswerTruth, QuestionType, ShapesQuestion } from "./questions.js";
export { checkAnswer } from "./check.js";
export { evaluateShapes, encodePng } from "./evaluate.js";
export type { EvalCategory, ShapesEvalOptions, ShapesEvalRecord, ShapesEvalResult } from "./evaluate.js";
export {
  SEGMENT_PROMPT_KINDS,
  evaluateSegmentation,
  maskIou,
  type IouSummary,
  type SegmentEvalOptions,
  type SegmentEvalRecord,
  type SegmentEvalResult,
  type SegmentPromptKind,
  type Segments,
} from "./evaluate-segment.js";
export {
  SHAPES_LABELS,
  evaluateClassification,
  type ClassifyEvalOptions,
  type ClassifyEvalResult,
  type Classifies,
} from "./evaluate-classify.js";
