import { Command } from "commander";
import { RegionVqaError } from "../../common/errors.js";
import { resolveModelOptions } from "../../models/index.js";
import { createPipeline } from "../../pipeline/index.js";
import {
  addModelOptions,
  configureImaging,
  modelConfigFromFlags,
  type ModelCliOptions,
} from "../model-options.js";
import { addRegionOptions, readImageAndRegion, type RegionCliOptions } from "../region-args.js";

interface ClassifyCliOptions extends ModelCliOptions, RegionCliOptions {
  label?: string[];
  template?: string[];
  json?: boolean;
}

const collect = (v: string, prev: string[] = []) => [...prev, v];

/**
 * `region-vqa classify`: Alpha-CLIP's zero-shot classification of one region: one
 * `<probability>\t<label>` line per label on stdout, best first.
 */
export function register(program: Command): void {
  const cmd = program
    .command("classify")
    .description("zero-shot classification of a region among labels (Alpha-CLIP + the CLIP text tower)");
  addRegionOptions(cmd);
  addModelOptions(cmd)
    .option("--label <text>", "a candidate label (repeat for more)", collect)
    .option(
      "--template <text>",
      'prompt template with {} for the label (default "a photo of a {}."); repeat to average several',
      collect,
    )
    .option("--json", "print the full result as JSON")
    .action(async (opts: ClassifyCliOptions) => {
      const modelConfig = modelConfigFromFlags(opts);
      configureImaging(modelConfig);
      if (!opts.label?.length) throw new RegionVqaError("labels_invalid", "Give at least one --label.");
      const [{ image, region }, models] = await Promise.all([
        readImageAndRegion(opts),
        resolveModelOptions(modelConfig),
      ]);
      const pipeline = await createPipeline({
        ...models,
        segmenter: region.kind === "points" ? models.segmenter : undefined,
        maxConversations: 1,
      });
      try {
        const result = await pipeline.classifyRegions(image, [region], opts.label, {
          templates: opts.template,
        });
        if (opts.json) {
          process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
          return;
        }
        const lines = result.regions[0].labels.map((l) => `${l.probability.toFixed(4)}\t${l.label}`);
        process.stdout.write(`${lines.join("\n")}\n`);
      } finally {
        await pipeline.dispose();
      }
    });
}
