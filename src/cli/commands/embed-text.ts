import { writeFile } from "node:fs/promises";
import { Command, Option } from "commander";
import { RegionVqaError } from "../../common/errors.js";
import type { OrtDevice } from "../../common/ort/index.js";
import {
  ClipTextEncoder,
  ClipTokenizer,
  l2NormalizeRows,
  parseTokenIdFile,
  readClipTextManifest,
} from "../../text/index.js";
import { addOnnxSessionOptions } from "../model-options.js";
import { numberFlag } from "../number-flag.js";
import { readInputFile } from "../region-args.js";

interface EmbedTextCliOptions {
  model: string;
  text: string[];
  ids?: string;
  idsDtype: "int32" | "int64";
  truncate?: boolean;
  normalize?: boolean;
  out: string;
  device: OrtDevice;
  threads?: string;
}

/**
 * `region-vqa embed-text`: texts (through CLIP's BPE tokenizer) or token ids -> CLIP text features,
 * written as raw float32 little-endian [N, embed_dim] (unnormalised unless --normalize), with a
 * one-line JSON summary.
 */
export function register(program: Command): void {
  addOnnxSessionOptions(
    program
      .command("embed-text")
      .description("encode texts with a CLIP text model; writes features as raw float32 LE [N, embed_dim]")
      .requiredOption("--model <dir>", "text model folder (manifest kind clip-text)")
      .option(
        "--text <text>",
        "a text to encode (repeat for several)",
        (v: string, acc: string[]) => [...acc, v],
        [],
      )
      .option(
        "--ids <file>",
        "raw little-endian token ids [N, 77] instead of --text (e.g. a saved tokenize output)",
      )
      .addOption(
        new Option("--ids-dtype <type>", "element type of --ids")
          .choices(["int32", "int64"])
          .default("int32"),
      )
      .option(
        "--truncate",
        "cut a --text longer than the context to its first 76 tokens + EOT (Alpha-CLIP's tokenize default; " +
          "without it such a text is an error, as in openai/CLIP)",
      )
      .option("--normalize", "L2-normalise each row (Alpha-CLIP's zero-shot scores are 100 * cosine)")
      .requiredOption("--out <file>", "output file for the features"),
  ).action(async (opts: EmbedTextCliOptions) => {
    const hasText = opts.text.length > 0;
    if (hasText === (opts.ids !== undefined)) {
      throw new RegionVqaError("invalid_request", "Give either --text (one or more) or --ids.");
    }
    const threads = numberFlag(opts.threads, "--threads", { min: 1, integer: true });
    const started = performance.now();
    // The ids are checked against the manifest before the model loads: a bad file fails at once.
    const { contextLength } = (await readClipTextManifest(opts.model)).config;
    const ids = opts.ids
      ? parseTokenIdFile(await readInputFile(opts.ids, "token id"), opts.idsDtype, contextLength)
      : (await ClipTokenizer.load()).tokenize(opts.text, {
          contextLength,
          truncate: opts.truncate === true,
        });
    const encoder = await ClipTextEncoder.load(opts.model, {
      device: opts.device,
      threads,
      logger: { info: (m: string) => process.stderr.write(`${m}\n`) },
    });
    try {
      const encStarted = performance.now();
      let features = await encoder.encode(ids);
      const encodeMs = performance.now() - encStarted;
      if (opts.normalize) features = l2NormalizeRows(features);
      const { data, shape } = features;
      // Float32Array is little-endian on every platform Node supports for this project (x64, arm64).
      await writeFile(opts.out, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
      const summary = {
        out: opts.out,
        shape,
        dtype: "float32",
        byteOrder: "little-endian",
        normalized: opts.normalize === true,
        model: opts.model,
        provider: encoder.provider,
        threads: encoder.threads,
        encodeMs: Math.round(encodeMs * 10) / 10,
        totalMs: Math.round((performance.now() - started) * 10) / 10,
      };
      process.stdout.write(`${JSON.stringify(summary)}\n`);
    } finally {
      await encoder.dispose();
    }
  });
}
