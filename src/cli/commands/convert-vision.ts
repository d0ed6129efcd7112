import fs from "node:fs";
import path from "node:path";
import { Command, Option } from "commander";
import { RegionVqaError } from "../../common/errors.js";
import { convertFusedVisionProjector } from "../../projector/index.js";
import { convertVisionCheckpoint } from "../../vision/convert/index.js";
import { numberFlag } from "../number-flag.js";

const headsFlag = (value: string): number => numberFlag(value, "--heads", { min: 1, integer: true })!;

/** `region-vqa convert-vision`: Alpha-CLIP checkpoint (.pth / .safetensors) -> ONNX model folder. */
export function register(program: Command): void {
  program
    .command("convert-vision")
    .description(
      "convert an Alpha-CLIP visual checkpoint (torch .pth or .safetensors) into an ONNX model folder",
    )
    .requiredOption("--checkpoint <file>", "checkpoint file (torch.save zip or safetensors)")
    .requiredOption("--out <dir>", "model folder to write (e.g. models/alpha-clip-l14-336)")
    .option("--heads <n>", "attention heads (not stored in checkpoints; default width / 64)", headsFlag)
    .addOption(
      new Option("--precision <p>", "weight precision in the ONNX file")
        .choices(["fp32", "fp16"])
        .default("fp32"),
    )
    .option("--name <name>", "model name for the manifest (default: the folder name)")
    .option(
      "--projector <file>",
      "fuse a LLaVA projector (mmproj .gguf or LLaVA checkpoint) into the graph: one run outputs `projected`",
    )
    .option("--force", "overwrite an existing model folder")
    .option("--json", "print the manifest as JSON")
    .action(
      async (opts: {
        checkpoint: string;
        out: string;
        heads?: number;
        precision: "fp32" | "fp16";
        name?: string;
        force?: boolean;
        json?: boolean;
        projector?: string;
      }) => {
        if (!opts.force && fs.existsSync(path.join(opts.out, "manifest.json"))) {
          throw new RegionVqaError(
            "invalid_request",
            `${opts.out} already holds a model (manifest.json); pass --force to overwrite`,
          );
        }
        const started = Date.now();
        // --projector (projector helper): same conversion with the projector appended after llava_features.
        const convert = opts.projector
          ? (o: Parameters<typeof convertVisionCheckpoint>[0]) =>
              convertFusedVisionProjector({ ...o, projector: opts.projector! })
          : convertVisionCheckpoint;
        const manifest = await convert({
          checkpoint: opts.checkpoint,
          out: opts.out,
          heads: opts.heads,
          precision: opts.precision,
          name: opts.name,
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
            `${c.layers} layers, ${c.heads} heads, ${c.imageSize}px / patch ${c.patchSize}, output ${c.outputDim}); ` +
            `${files}; ${((Date.now() - started) / 1000).toFixed(1)} s\n`,
        );
      },
    );
}
