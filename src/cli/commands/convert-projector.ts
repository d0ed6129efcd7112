import { Command, Option } from "commander";
import { RegionVqaError } from "../../common/errors.js";
import { loadProjectorWeights, writeMmprojGguf, writeProjectorFolder } from "../../projector/index.js";

/**
 * `region-vqa convert-projector SOURCE`: read the LLaVA-1.5 projector from an mmproj GGUF or a LLaVA
 * checkpoint and write a projector model folder (--out) and/or a projector-only mmproj GGUF (--mmproj).
 */
export function register(program: Command): void {
  program
    .command("convert-projector")
    .description(
      "convert a LLaVA-1.5 projector (mmproj GGUF or LLaVA checkpoint) to a model folder or mmproj GGUF",
    )
    .argument(
      "<source>",
      "mmproj .gguf, or LLaVA checkpoint (.safetensors / .bin / .pth with model.mm_projector.*)",
    )
    .option("--out <dir>", "write a projector model folder (ONNX + manifest.json, kind llava-projector)")
    .addOption(
      new Option("--precision <p>", "folder weight precision").choices(["fp32", "fp16"]).default("fp32"),
    )
    .option("--mmproj <file>", "write a projector-only mmproj GGUF (llama.cpp layout)")
    .addOption(new Option("--gguf-type <t>", "mmproj weight type").choices(["f16", "f32"]).default("f16"))
    .option("--name <name>", "model name recorded in the output")
    .action(
      async (
        source: string,
        opts: {
          out?: string;
          precision: "fp32" | "fp16";
          mmproj?: string;
          ggufType: "f16" | "f32";
          name?: string;
        },
      ) => {
        if (!opts.out && !opts.mmproj) {
          throw new RegionVqaError(
            "invalid_request",
            "convert-projector needs --out DIR and/or --mmproj FILE",
          );
        }
        const started = Date.now();
        const weights = await loadProjectorWeights(source);
        console.error(
          `projector ${weights.inWidth} -> ${weights.hiddenWidth} -> ${weights.outWidth} ` +
            `(${weights.source?.format}, ${weights.source?.dtype}) from ${source}`,
        );
        const result: Record<string, unknown> = {
          inWidth: weights.inWidth,
          hiddenWidth: weights.hiddenWidth,
          outWidth: weights.outWidth,
        };
        if (opts.out) {
          const manifest = await writeProjectorFolder(opts.out, weights, {
            precision: opts.precision,
            name: opts.name,
          });
          result.folder = { path: opts.out, files: manifest.files };
        }
        if (opts.mmproj) {
          const written = await writeMmprojGguf(opts.mmproj, weights, {
            precision: opts.ggufType,
            name: opts.name,
          });
          result.mmproj = { path: opts.mmproj, bytes: written.bytes };
        }
        console.error(`done in ${((Date.now() - started) / 1000).toFixed(1)} s`);
        process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
      },
    );
}
