/**
 * Judges a free-text answer against the truth of a shapes scene. Rules (the same as
 * tools/shapes/world.py `check_answer`): words are lower-cased runs of letters and digits;
 * colour/shape questions need exactly the right colour/shape words and no other; "what"/"describe"
 * need both; yes/no questions are judged by a leading yes/no, else by the answer's only yes/no word; counting needs exactly one number (digits
 * or a word) equal to the truth; position needs the same top/bottom and left/right words, or
 * centre/center/middle for the centre.
 */
import type { AnswerTruth, QuestionType } from "./questions.js";
import { COLOUR_NAMES, SHAPES } from "./scene.js";

const NUMBER_WORDS: Record<string, number> = { one: 1, two: 2, three: 3, four: 4, five: 5 };

function wordsOf(text: string): string[] {
  return text.toLowerCase().match(/[\p{L}\p{N}]+/gu) ?? [];
}

function sameSet(found: Set<string>, expected: string): boolean {
  return found.size === 1 && found.has(expected);
}

export function checkAnswer(type: QuestionType, answer: string, truth: AnswerTruth): boolean {
  const words = wordsOf(answer);
  const has = (w: string): boolean => words.includes(w);
  const colours = new Set<string>(COLOUR_NAMES.filter(has));
  if (has("grey") || has("gray")) colours.add("grey");
  const shapes = new Set<string>(SHAPES.filter((s) => has(s) || has(`${s}s`)));
  switch (type) {
    case "colour":
      return sameSet(colours, truth.colour);
    case "shape":
      return sameSet(shapes, truth.shape);
    case "what":
    case "describe":
      return sameSet(colours, truth.colour) && sameSet(shapes, truth.shape);
    case "is_shape":
    case "is_colour": {
      const verdicts = words.filter((w) => w === "yes" || w === "no");
      const verdict =
        words[0] === "yes" || words[0] === "no" ? words[0] : verdicts.length === 1 ? verdicts[0] : undefined;
      if (!verdict) return false;
      const actual = type === "is_shape" ? truth.shape : truth.colour;
      return (verdict === "yes") === (truth.asked === actual);
    }
    case "count": {
      const numbers = words.filter((w) => /^\d+$/.test(w)).map(Number);
      for (const [w, n] of Object.entries(NUMBER_WORDS)) if (has(w)) numbers.push(n);
      return numbers.length === 1 && numbers[0] === truth.count;
    }
    case "where": {
      const vertical = ["top", "bottom"].filter(has);
      const horizontal = ["left", "right"].filter(has);
      if (vertical.length > 1 || horizontal.length > 1) return false;
      const central = has("centre") || has("center") || has("middle");
      const got =
        vertical.length + horizontal.length === 0
          ? central
            ? "centre"
            : undefined
          : [...vertical, ...horizontal].join(" ");
      return got === truth.position;
    }
  }
}
