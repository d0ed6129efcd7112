import { Command } from "commander";
import { convertTextCheckpoint } from "../../text/index.js";
import {
  addConversionOptions,
  printConversion,
  refuseExistingModel,
  stderrLogger,
  type ConversionCliOptions,
} from "../conversion.js";

/** `region-vqa convert-text`: CLIP text checkpoint (OpenAI or Hugging Face layout) -> ONNX model folder. */
export function register(program: Command): void {
  const cmd = program
    .command("convert-text")
    .description(
      "convert a CLIP text encoder (OpenAI .pt / torch state dict, or Hugging Face pytorch_model.bin / " +
        "model.safetensors) into an ONNX model folder",
    );
  addConversionOptions(cmd, {
    checkpoint: "checkpoint file (torch.save zip, TorchScript .pt or safetensors)",
    out: "model folder to write (e.g. models/clip-text-l14-336)",
  })
    .option("--no-self-check", "skip running the written model against the float64 reference forward pass")
    .option("--force", "overwrite an existing model folder")
    .option("--json", "print the manifest as JSON")
    .action(async (opts: ConversionCliOptions & { selfCheck: boolean }) => {
      refuseExistingModel(opts);
      const started = Date.now();
      const manifest = await convertTextCheckpoint({
        checkpoint: opts.checkpoint,
        out: opts.out,
        heads: opts.heads,
        precision: opts.precision,
        name: opts.name,
        selfCheck: opts.selfCheck,
        logger: stderrLogger,
      });
      const c = manifest.config;
      printConversion(
        opts,
        manifest,
        `width ${c.width}, ${c.layers} layers, ${c.heads} heads, context ${c.contextLength}, output ${c.embedDim}`,
        started,
      );
    });
}
