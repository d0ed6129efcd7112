import { Command } from "commander";
import { createPipeline } from "../../pipeline/index.js";
import {
  addModelOptions,
  configureImaging,
  modelConfigFromFlags,
  type ModelCliOptions,
} from "../model-options.js";
import { resolveModelOptions } from "../../models/index.js";
import { numberFlag } from "../number-flag.js";
import { addRegionOptions, readImageAndRegion, type RegionCliOptions } from "../region-args.js";

interface AskCliOptions extends ModelCliOptions, RegionCliOptions {
  question: string[];
  maxTokens: string;
  temperature: string;
  topP?: string;
  topK?: string;
  repeatPenalty?: string;
  seed?: string;
  system?: string;
  verbose?: boolean;
}

/**
 * `region-vqa ask`: image + region + question(s) -> the answer, streamed to stdout as it is generated.
 * Several --question flags are asked in turn in one conversation (follow-ups reuse the KV cache).
 * stdout gets only the answer text; logs go to stderr.
 */
export function register(program: Command): void {
  const cmd = program
    .command("ask")
    .description("ask a question about a region of an image; the answer streams to stdout");
  addRegionOptions(cmd);
  addModelOptions(cmd)
    .requiredOption(
      "--question <text>",
      "question (repeat for follow-ups in the same conversation)",
      (v: string, prev: string[] = []) => [...prev, v],
    )
    .option("--max-tokens <n>", "most tokens per answer", "256")
    .option("--temperature <t>", "sampling temperature; 0 = plain greedy decoding, no penalties", "0")
    .option("--top-p <p>", "nucleus sampling")
    .option("--top-k <k>", "top-k sampling")
    .option("--repeat-penalty <r>", "repeat penalty (ignored at temperature 0)")
    .option("--seed <s>", "sampling seed")
    .option("--system <text>", "system prompt (default: LLaVA-1.5's)")
    .option("--verbose", "log model loading and timings to stderr")
    .addHelpText(
      "after",
      "\nWithout model flags the bundled default model (models/shapes) answers.\n" +
        "Without --mask, --box, --polygon, --alpha or --point the whole image is the region.\n" +
        "--point x,y (repeatable; x,y,0 excludes) makes the region with the segmenter (SAM).",
    )
    .action(async (opts: AskCliOptions) => {
      const modelConfig = modelConfigFromFlags(opts);
      configureImaging(modelConfig);
      const log = (m: string): void => {
        if (opts.verbose) process.stderr.write(`${m}\n`);
      };
      const generation = {
        maxTokens: numberFlag(opts.maxTokens, "--max-tokens", { min: 1, integer: true }),
        temperature: numberFlag(opts.temperature, "--temperature", { min: 0, max: 10 }),
        topP: numberFlag(opts.topP, "--top-p", { min: 0, max: 1 }),
        topK: numberFlag(opts.topK, "--top-k", { min: 0, integer: true }),
        repeatPenalty: numberFlag(opts.repeatPenalty, "--repeat-penalty", { min: 0 }),
        seed: numberFlag(opts.seed, "--seed", { min: 0, integer: true }),
      };
      const [{ image, region }, models] = await Promise.all([
        readImageAndRegion(opts),
        resolveModelOptions(modelConfig),
      ]);
      const t0 = performance.now();
      const pipeline = await createPipeline({
        ...models,
        // Only what this one question needs: no text tower, and the segmenter only for clicks.
        text: undefined,
        segmenter: region.kind === "points" ? models.segmenter : undefined,
        maxConversations: 1,
        systemPrompt: opts.system,
        logger: { info: log, warn: (m) => process.stderr.write(`${m}\n`) },
        onStage: (stage, ms) => log(`${stage}: ${ms.toFixed(1)} ms`),
      });
      log(`models loaded in ${(performance.now() - t0).toFixed(0)} ms`);
      const abort = new AbortController();
      const onSigint = (): void => abort.abort();
      process.once("SIGINT", onSigint);
      try {
        const conversation = await pipeline.openConversation(image, region);
        for (const question of opts.question) {
          if (opts.question.length > 1) process.stdout.write(`Q: ${question}\nA: `);
          const stream = conversation.ask(question, { ...generation, signal: abort.signal });
          for await (const piece of stream) process.stdout.write(piece);
          process.stdout.write("\n");
          const result = await stream.result;
          log(`${result.completionTokens} tokens, finish: ${result.finishReason}`);
        }
      } finally {
        process.off("SIGINT", onSigint);
        await pipeline.dispose();
      }
    });
}
