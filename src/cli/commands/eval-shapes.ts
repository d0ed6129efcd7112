import { Command } from "commander";
import { RegionVqaError } from "../../common/errors.js";
import { createPipeline } from "../../pipeline/index.js";
import { QUESTION_TYPES, evaluateShapes, type QuestionType } from "../../shapes/index.js";
import {
  addModelOptions,
  configureImaging,
  modelConfigFromFlags,
  type ModelCliOptions,
} from "../model-options.js";
import { resolveModelOptions } from "../../models/index.js";
import { numberFlag } from "../number-flag.js";

interface EvalShapesCliOptions extends ModelCliOptions {
  scenes: string;
  seed: string;
  region: "mask" | "box";
  types?: string;
  wholeColour: boolean;
  json?: boolean;
  verbose?: boolean;
}

/**
 * `region-vqa eval-shapes`: generates fresh synthetic scenes (src/shapes), asks every question type
 * through the full pipeline and prints the accuracy per type (stdout); progress goes to stderr.
 */
export function register(program: Command): void {
  const cmd = program
    .command("eval-shapes")
    .description("accuracy per question type on generated shapes scenes, through the full pipeline");
  addModelOptions(cmd)
    .option("--scenes <n>", "number of scenes", "50")
    .option("--seed <s>", "scene seed (scenes 0..n-1 of it)", "1000")
    .option("--region <kind>", "object regions as mask or box", "mask")
    .option("--types <list>", `comma-separated question types (default all: ${QUESTION_TYPES.join(",")})`)
    .option("--no-whole-colour", "skip the colour question asked about the whole image")
    .option("--json", "print the result as JSON")
    .option("--verbose", "print every question and answer to stderr")
    .action(async (opts: EvalShapesCliOptions) => {
      const modelConfig = modelConfigFromFlags(opts);
      configureImaging(modelConfig);
      const scenes = numberFlag(opts.scenes, "--scenes", { min: 1, max: 100000, integer: true })!;
      const seed = numberFlag(opts.seed, "--seed", { min: 0, max: 0xffffffff, integer: true })!;
      if (opts.region !== "mask" && opts.region !== "box") {
        throw new RegionVqaError("invalid_request", `--region must be mask or box, got "${opts.region}"`);
      }
      let types: QuestionType[] | undefined;
      if (opts.types) {
        types = opts.types.split(",").map((t) => t.trim()) as QuestionType[];
        const unknown = types.filter((t) => !QUESTION_TYPES.includes(t));
        if (unknown.length) {
          throw new RegionVqaError(
            "invalid_request",
            `unknown question type(s) ${unknown.join(", ")}; known: ${QUESTION_TYPES.join(", ")}`,
          );
        }
      }
      const models = await resolveModelOptions(modelConfig);
      // Boxes and masks only: neither the segmenter nor the text tower is needed.
      const pipeline = await createPipeline({
        ...models,
        segmenter: undefined,
        text: undefined,
        maxConversations: 2,
      });
      try {
        let done = 0;
        const result = await evaluateShapes(pipeline, {
          scenes,
          seed,
          regionKind: opts.region,
          types,
          wholeImageColour: opts.wholeColour,
          onAnswer: (r) => {
            done++;
            if (opts.verbose) {
              process.stderr.write(
                `${r.correct ? "ok   " : "WRONG"} [${r.scene} ${r.category}] ${r.question} -> ${r.answer}\n`,
              );
            } else if (done % 50 === 0) process.stderr.write(`eval-shapes: ${done} answers\n`);
          },
        });
        if (opts.json) {
          process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
          return;
        }
        const lines = [
          `seed ${seed}, ${scenes} scenes, ${opts.region} regions, ${result.seconds.toFixed(0)} s`,
        ];
        for (const [category, t] of Object.entries(result.perCategory)) {
          lines.push(
            `  ${category.padEnd(13)} ${(100 * t.accuracy).toFixed(1).padStart(5)}%  (${t.correct}/${t.total})`,
          );
        }
        process.stdout.write(`${lines.join("\n")}\n`);
      } finally {
        await pipeline.dispose();
      }
    });
}
