import { Command } from "commander";
import { convertFusedVisionProjector } from "../../projector/index.js";
import { convertVisionCheckpoint } from "../../vision/convert/index.js";
import {
  addConversionOptions,
  printConversion,
  refuseExistingModel,
  stderrLogger,
  type ConversionCliOptions,
} from "../conversion.js";

/** `region-vqa convert-vision`: Alpha-CLIP checkpoint (.pth / .safetensors) -> ONNX model folder. */
export function register(program: Command): void {
  const cmd = program
    .command("convert-vision")
    .description(
      "convert an Alpha-CLIP visual checkpoint (torch .pth or .safetensors) into an ONNX model folder",
    );
  addConversionOptions(cmd, {
    checkpoint: "checkpoint file (torch.save zip or safetensors)",
    out: "model folder to write (e.g. models/alpha-clip-l14-336)",
  })
    .option(
      "--projector <file>",
      "fuse a LLaVA projector (mmproj .gguf or LLaVA checkpoint) into the graph: one run outputs `projected`",
    )
    .option("--force", "overwrite an existing model folder")
    .option("--json", "print the manifest as JSON")
    .action(async (opts: ConversionCliOptions & { projector?: string }) => {
      refuseExistingModel(opts);
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
        logger: stderrLogger,
      });
      const c = manifest.config;
      printConversion(
        opts,
        manifest,
        `width ${c.width}, ${c.layers} layers, ${c.heads} heads, ${c.imageSize}px / patch ${c.patchSize}, output ${c.outputDim}`,
        started,
      );
    });
}
