import { Command } from "commander";
import { resolveModelOptions } from "../../models/index.js";
import { createPipeline } from "../../pipeline/index.js";
import { evaluateClassification } from "../../shapes/index.js";
import {
  addModelOptions,
  configureImaging,
  modelConfigFromFlags,
  type ModelCliOptions,
} from "../model-options.js";
import { numberFlag } from "../number-flag.js";

interface EvalClassifyCliOptions extends ModelCliOptions {
  scenes: string;
  seed: string;
  template?: string;
  json?: boolean;
}

const pct = (v: number) => `${(100 * v).toFixed(1)} %`;

/**
 * `region-vqa eval-classify`: zero-shot top-1 over the 24 colour-shape labels with mask regions, the
 * same with the whole image as the region, and region retrieval by label, on generated shapes scenes.
 */
export function register(program: Command): void {
  const cmd = program
    .command("eval-classify")
    .description(
      "zero-shot classification accuracy on generated shapes scenes (masks, whole image, retrieval)",
    );
  addModelOptions(cmd)
    .option("--scenes <n>", "number of scenes", "300")
    .option("--seed <s>", "scene seed (scenes 0..n-1 of it)", "1000")
    .option("--template <text>", 'label template (default "a photo of a {}.")')
    .option("--json", "print the result as JSON")
    .action(async (opts: EvalClassifyCliOptions) => {
      const modelConfig = modelConfigFromFlags(opts);
      configureImaging(modelConfig);
      const scenes = numberFlag(opts.scenes, "--scenes", { min: 1, max: 100000, integer: true })!;
      const seed = numberFlag(opts.seed, "--seed", { min: 0, max: 0xffffffff, integer: true })!;
      const models = await resolveModelOptions(modelConfig);
      const pipeline = await createPipeline({ ...models, segmenter: undefined, maxConversations: 1 });
      try {
        const result = await evaluateClassification(pipeline, { scenes, seed, template: opts.template });
        if (opts.json) {
          process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
          return;
        }
        const row = (name: string, r: { correct: number; total: number; accuracy: number }) =>
          `${name.padEnd(34)} ${pct(r.accuracy).padStart(8)}  (${r.correct} / ${r.total})`;
        process.stdout.write(
          [
            `${scenes} scenes of seed ${seed}, ${result.labels.length} labels, ${result.seconds.toFixed(1)} s`,
            row("top-1, object mask regions", result.maskTop1),
            row("top-1, whole image (one object)", result.wholeImageTop1),
            row('retrieval ("the red circle")', result.retrieval),
          ].join("\n") + "\n",
        );
      } finally {
        await pipeline.dispose();
      }
    });
}
