import fs from "node:fs";
import path from "node:path";
import { Command, Option } from "commander";
import { RegionVqaError } from "../../common/errors.js";
import { convertTextCheckpoint } from "../../text/index.js";
import { numberFlag } from "../number-flag.js";

const headsFlag = (value: string): number => numberFlag(value, "--heads", { min: 1, integer: true })!;

/** `region-vqa convert-text`: CLIP text checkpoint (OpenAI or Hugging Face layout) -> ONNX model folder. */
export function register(program: Command): void {
  program
    .command("convert-text")
    .description(
      "convert a CLIP text encoder (OpenAI .pt / torch state dict, or Hugging Face pytorch_model.bin / " +
        "model.safetensors) into an ONNX model folder",
    )
    .requiredOption("--checkpoint <file>", "checkpoint file (torch.save zip, TorchScript .pt or safetensors)")
    .requiredOption("--out <dir>", "model folder to write (e.g. models/clip-text-l14-336)")
    .option("--heads <n>", "attention heads (not stored in checkpoints; default width / 64)", headsFlag)
    .addOption(
      new Option("--precision <p>", "weight precision in the ONNX file")
        .choices(["fp32", "fp16"])
        .default("fp32"),
    )
    .option("--name <name>", "model name for the manifest (default: the folder name)")
    .option("--no-self-check", "skip running the written model against the float64 reference forward pass")
    .option("--force", "overwrite an existing model folder")
    .option("--json", "print the manifest as JSON")
    .action(
      async (opts: {
        checkpoint: string;
        out: string;
        heads?: number;
        precision: "fp32" | "fp16";
        name?: string;
        selfCheck: boolean;
        force?: boolean;
        json?: boolean;
      }) => {
        if (!opts.force && fs.existsSync(path.join(opts.out, "manifest.json"))) {
          throw new RegionVqaError(
            "invalid_request",
            `${opts.out} already holds a model (manifest.json); pass --force to overwrite`,
          );
        }
        const started = Date.now();
        const manifest = await convertTextCheckpoint({
          checkpoint: opts.checkpoint,
          out: opts.out,
          heads: opts.heads,
          precision: opts.precision,
          name: opts.name,
          selfCheck: opts.selfCheck,
          logger: {
            info: (m) => process.stderr.write(`${m}\n`),
            warn: (m) => process.stderr.write(`warning: ${m}\n`),
          },
        });
        if (opts.json) {
          process.stdout.write(`${JSON.stringify(manifest, null, 2)}\n`);
          return;
        }
        const c = manifest.config;
        const files = manifest.files.map((f) => `${f.path} ${(f.bytes / 1e6).toFixed(1)} MB`).join(", ");
        process.stdout.write(
          `${path.resolve(opts.out)}: ${manifest.kind} "${manifest.name}" (${manifest.precision}; width ${c.width}, ` +
            `${c.layers} layers, ${c.heads} heads, context ${c.contextLength}, output ${c.embedDim}); ` +
            `${files}; ${((Date.now() - started) / 1000).toFixed(1)} s\n`,
        );
      },
    );
}
