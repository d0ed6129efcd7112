import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import {
  COLOUR_NAMES,
  Mulberry32,
  POSITIONS,
  QUESTION_TYPES,
  SHAPES,
  TEMPLATES,
  checkAnswer,
  generateScene,
  makeQuestion,
  positionOf,
  referenceAnswer,
  renderScene,
  sceneRng,
  truthFor,
  type AnswerTruth,
} from "../src/shapes/index.js";

const repoRoot = path.resolve(import.meta.dirname, "..");
/** Written by tools/shapes/make_fixture.py from the Python world the model was trained on. */
const fixture = JSON.parse(readFileSync(path.join(repoRoot, "test/fixtures/shapes-python.json"), "utf8")) as {
  mulberry32_12345: number[];
  scene_rng_7_3: number[];
  scenes: Array<{
    seed: number;
    index: number;
    width: number;
    height: number;
    objects: Array<{ shape: string; colour: string; x0: number; y0: number; size: number; position: string }>;
    sha256: string;
  }>;
  questions: string[];
  answers: string[];
};

describe("shapes world matches the Python training generator", () => {
  it("mulberry32 gives the same 32-bit outputs", () => {
    const rng = new Mulberry32(12345);
    expect(fixture.mulberry32_12345.map(() => rng.nextU32())).toEqual(fixture.mulberry32_12345);
    expect([sceneRng(7, 3).nextU32()]).toEqual(fixture.scene_rng_7_3);
  });

  it("renders the same scenes pixel for pixel (RGB and every object mask)", () => {
    expect(fixture.scenes.length).toBeGreaterThan(20);
    for (const want of fixture.scenes) {
      const scene = generateScene(want.seed, want.index);
      expect({ w: scene.width, h: scene.height }).toEqual({ w: want.width, h: want.height });
      expect(
        scene.objects.map((o) => ({ ...o, position: positionOf(o, scene.width, scene.height) })),
      ).toEqual(want.objects);
      const { image, masks } = renderScene(scene);
      const hash = createHash("sha256").update(image.data);
      for (const m of masks) hash.update(m.data);
      expect(hash.digest("hex"), `scene ${want.seed}/${want.index}`).toBe(want.sha256);
    }
  });

  it("has the same question wording and reference answers", () => {
    const questions: string[] = [];
    for (const type of QUESTION_TYPES) {
      for (const t of TEMPLATES[type]) {
        if (t.includes("{shape}")) questions.push(...SHAPES.map((s) => t.replace("{shape}", s)));
        else if (t.includes("{colour}")) questions.push(...COLOUR_NAMES.map((c) => t.replace("{colour}", c)));
        else questions.push(t);
      }
    }
    expect(questions).toEqual(fixture.questions);
    const answers = new Set<string>();
    for (const colour of COLOUR_NAMES) {
      for (const shape of SHAPES) {
        for (const position of POSITIONS) {
          for (const asked of [shape, colour, "nothing"]) {
            const truth: AnswerTruth = { colour, shape, position, count: 3, asked };
            for (const type of QUESTION_TYPES) answers.add(referenceAnswer(type, truth));
          }
        }
      }
    }
    // Every TypeScript answer is one the model was trained on.
    for (const a of answers) expect(fixture.answers).toContain(a);
  });
});

describe("shapes scenes", () => {
  it("keep to the world's rules", () => {
    for (let i = 0; i < 150; i++) {
      const scene = generateScene(99, i);
      const { width, height, objects } = scene;
      expect(width).toBeGreaterThanOrEqual(160);
      expect(height).toBeLessThanOrEqual(320);
      expect(objects.length).toBeGreaterThanOrEqual(2);
      expect(objects.length).toBeLessThanOrEqual(4);
      const short = Math.min(width, height);
      const { image, masks } = renderScene(scene);
      const keys = new Set(objects.map((o) => `${o.shape}/${o.colour}`));
      expect(keys.size).toBe(objects.length);
      objects.forEach((o, k) => {
        expect(o.size).toBeGreaterThanOrEqual(0.14 * short);
        expect(o.size).toBeLessThanOrEqual(0.4 * short);
        expect(o.x0 + o.size).toBeLessThanOrEqual(width);
        expect(o.y0 + o.size).toBeLessThanOrEqual(height);
        // Each mask pixel has the object's colour: no object paints over another.
        let count = 0;
        let background = 0;
        masks[k].data.forEach((v, p) => {
          if (!v) return;
          count++;
          if (image.data[p * 3] === 200) background++;
        });
        expect(background).toBe(0);
        expect(count).toBeGreaterThan(0.2 * o.size * o.size);
      });
    }
  });

  it("are reproducible and differ between seeds", () => {
    expect(generateScene(5, 5)).toEqual(generateScene(5, 5));
    expect(generateScene(5, 5)).not.toEqual(generateScene(6, 5));
    expect(() => generateScene(-1, 0)).toThrow(RangeError);
    expect(() => generateScene(1.5, 0)).toThrow(RangeError);
  });

  it("rasterise shapes by pixel centres", () => {
    const scene = { seed: 0, index: 0, width: 20, height: 20, objects: [] };
    const circle = renderScene({
      ...scene,
      objects: [{ shape: "circle", colour: "red", x0: 2, y0: 2, size: 10 }],
    });
    const m = circle.masks[0];
    expect(m.data[7 * 20 + 7]).toBe(1); // centre
    expect(m.data[2 * 20 + 2]).toBe(0); // box corner is outside the circle
    expect(m.data.reduce((a, b) => a + b, 0)).toBe(80); // pixel centres within radius 5 of (7, 7)
    expect(Array.from(circle.image.data.subarray((7 * 20 + 7) * 3, (7 * 20 + 7) * 3 + 3))).toEqual([
      220, 40, 40,
    ]);
    const square = renderScene({
      ...scene,
      objects: [{ shape: "square", colour: "blue", x0: 0, y0: 0, size: 4 }],
    });
    expect(square.masks[0].data.reduce((a, b) => a + b, 0)).toBe(16);
  });
});

describe("shapes questions and answer checking", () => {
  const truth: AnswerTruth = { colour: "red", shape: "star", position: "top left", count: 3 };

  it("accepts right answers and rejects wrong ones", () => {
    expect(checkAnswer("colour", "It is red.", truth)).toBe(true);
    expect(checkAnswer("colour", "It is red and blue.", truth)).toBe(false);
    expect(checkAnswer("colour", "It is orange.", truth)).toBe(false);
    expect(checkAnswer("shape", "A star.", truth)).toBe(true);
    expect(checkAnswer("shape", "It is a circle.", truth)).toBe(false);
    expect(checkAnswer("what", "It is a red star.", truth)).toBe(true);
    expect(checkAnswer("describe", "It is a red circle.", truth)).toBe(false);
    expect(checkAnswer("is_shape", "Yes, it is a star.", { ...truth, asked: "star" })).toBe(true);
    expect(checkAnswer("is_shape", "Yes, it is a star.", { ...truth, asked: "circle" })).toBe(false);
    expect(checkAnswer("is_colour", "No, it is red.", { ...truth, asked: "green" })).toBe(true);
    expect(checkAnswer("is_colour", "It is red.", { ...truth, asked: "red" })).toBe(false);
    expect(checkAnswer("is_colour", "It is red, so the answer is yes.", { ...truth, asked: "red" })).toBe(
      true,
    );
    expect(checkAnswer("is_colour", "It is red, so the answer is yes.", { ...truth, asked: "blue" })).toBe(
      false,
    );
    expect(checkAnswer("is_shape", "I cannot say yes or no.", { ...truth, asked: "star" })).toBe(false);
    expect(checkAnswer("count", "There are 3 objects.", truth)).toBe(true);
    expect(checkAnswer("count", "There are three objects.", truth)).toBe(true);
    expect(checkAnswer("count", "There are 4 objects.", truth)).toBe(false);
    expect(checkAnswer("where", "It is at the top left of the image.", truth)).toBe(true);
    expect(checkAnswer("where", "It is at the top of the image.", truth)).toBe(false);
    expect(checkAnswer("where", "It is in the centre.", { ...truth, position: "centre" })).toBe(true);
    expect(checkAnswer("where", "It is in the middle.", { ...truth, position: "centre" })).toBe(true);
    expect(checkAnswer("where", "top bottom left", truth)).toBe(false);
  });

  it("reference answers pass their own check for every scene object", () => {
    const rng = new Mulberry32(3);
    for (let i = 0; i < 40; i++) {
      const scene = generateScene(123, i);
      for (const obj of scene.objects) {
        for (const type of QUESTION_TYPES) {
          const q = makeQuestion(rng, type, obj);
          expect(q.text).not.toMatch(/[{}]/);
          const t = truthFor(scene, obj, q.asked);
          expect(checkAnswer(type, referenceAnswer(type, t), t)).toBe(true);
          // The wrong colour never passes a colour question.
          const wrong = COLOUR_NAMES.find((c) => c !== obj.colour)!;
          expect(checkAnswer("colour", `It is ${wrong}.`, t)).toBe(false);
        }
      }
    }
  });
});

describe("eval-shapes command", () => {
  it("refuses unknown question types and bad numbers before loading any model", async () => {
    const { main } = await import("../src/cli/index.js");
    const errors: string[] = [];
    const original = console.error;
    console.error = (...args: unknown[]) => void errors.push(args.join(" "));
    try {
      expect(await main(["node", "region-vqa", "eval-shapes", "--types", "colour,bogus"])).toBe(2);
      expect(await main(["node", "region-vqa", "eval-shapes", "--scenes", "0"])).toBe(2);
    } finally {
      console.error = original;
    }
    expect(errors[0]).toMatch(/unknown question type\(s\) bogus/);
    expect(errors[1]).toMatch(/--scenes must be an integer/);
  });
});
