import { Command, Option } from "commander";
import { RegionVqaError } from "../../common/errors.js";
import { ORT_DEVICES, type OrtDevice } from "../../common/ort/index.js";
import { resolveModelOptions } from "../../models/index.js";
import { NO_SEGMENTER_MESSAGE, SamSegmenter } from "../../segmenter/index.js";
import { SEGMENT_PROMPT_KINDS, evaluateSegmentation } from "../../shapes/index.js";
import { numberFlag } from "../number-flag.js";

interface EvalSegmentCliOptions {
  scenes: string;
  seed: string;
  model?: string;
  segmenter?: string;
  device?: string;
  threads?: string;
  json?: boolean;
  verbose?: boolean;
}

const pct = (v: number) => `${(100 * v).toFixed(1)} %`;

/**
 * `region-vqa eval-segment`: mean IoU of the segmenter's masks on generated shapes scenes, from one
 * click at a random interior pixel, from the object's box and from two clicks.
 */
export function register(program: Command): void {
  program
    .command("eval-segment")
    .description("segmenter IoU on generated shapes scenes: one click, a box, two clicks")
    .option("--scenes <n>", "number of scenes", "300")
    .option("--seed <s>", "scene seed (scenes 0..n-1 of it)", "1000")
    .option("--model <name|dir>", "model preset whose segmenter to use; default: the bundled model")
    .option("--segmenter <dir>", "segmenter folder (overrides --model)")
    .addOption(
      new Option("--device <device>", "ONNX Runtime device (default auto)").choices([...ORT_DEVICES]),
    )
    .option("--threads <n>", "ONNX Runtime threads (default: all cores)")
    .option("--json", "print the result as JSON")
    .option("--verbose", "print every scene's IoUs to stderr")
    .action(async (opts: EvalSegmentCliOptions) => {
      const scenes = numberFlag(opts.scenes, "--scenes", { min: 1, max: 100000, integer: true })!;
      const seed = numberFlag(opts.seed, "--seed", { min: 0, max: 0xffffffff, integer: true })!;
      const threads = numberFlag(opts.threads, "--threads", { min: 1, integer: true });
      const models = await resolveModelOptions({ preset: opts.model, segmenter: opts.segmenter });
      if (!models.segmenter) throw new RegionVqaError("segmenter_not_installed", NO_SEGMENTER_MESSAGE);
      const segmenter = await SamSegmenter.load(models.segmenter, {
        device: opts.device as OrtDevice | undefined,
        threads,
      });
      try {
        const result = await evaluateSegmentation(segmenter, {
          scenes,
          seed,
          onScene: (r) => {
            if (opts.verbose) {
              const ious = SEGMENT_PROMPT_KINDS.map((k) => `${k} ${r.iou[k].toFixed(3)}`).join("  ");
              process.stderr.write(`scene ${r.scene} (${r.shape}): ${ious}\n`);
            }
          },
        });
        if (opts.json) {
          process.stdout.write(`${JSON.stringify({ segmenter: models.segmenter, ...result }, null, 2)}\n`);
          return;
        }
        const lines = [
          `segmenter ${models.segmenter}: ${scenes} scenes of seed ${seed}, ${result.seconds.toFixed(1)} s`,
          "prompt       mean IoU   IoU >= 0.9   min",
          ...SEGMENT_PROMPT_KINDS.map((k) => {
            const s = result.perPrompt[k];
            return `${k.padEnd(12)} ${s.meanIou.toFixed(4).padStart(8)}   ${pct(s.atLeast90).padStart(10)}   ${s.minIou.toFixed(3)}`;
          }),
          "one click, per shape:",
          ...Object.entries(result.oneClickPerShape).map(
            ([shape, s]) => `  ${shape.padEnd(10)} ${s.meanIou.toFixed(4)} (${s.count} objects)`,
          ),
        ];
        process.stdout.write(`${lines.join("\n")}\n`);
      } finally {
        await segmenter.dispose();
      }
    });
}
