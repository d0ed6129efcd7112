import { writeFile } from "node:fs/promises";
import { Command } from "commander";
import { RegionVqaError } from "../../common/errors.js";
import { addOnnxSessionOptions } from "../model-options.js";
import { numberFlag } from "../number-flag.js";
import { parseBoxFlag, readInputFile } from "../region-args.js";
import {
  AlphaClipEncoder,
  alphaToMask,
  decodeImage,
  decodeMaskImage,
  preprocessForLlava,
  regionToMask,
  type EncoderDevice,
  type Mask,
} from "../../vision/index.js";

interface EncodeCliOptions {
  model: string;
  image: string;
  mask?: string;
  box?: string;
  alpha?: boolean;
  out: string;
  device: EncoderDevice;
  threads?: string;
}

/**
 * `region-vqa encode`: one image + one region -> the Alpha-CLIP LLaVA features as raw float32
 * little-endian [G*G, W] (what the projector takes), with a one-line JSON summary on stdout.
 */
export function register(program: Command): void {
  addOnnxSessionOptions(
    program
      .command("encode")
      .description(
        "encode an image region with Alpha-CLIP; writes LLaVA features as raw float32 LE [tokens, width]",
      )
      .requiredOption("--model <dir>", "vision model folder (manifest kind alpha-clip-vision)")
      .requiredOption("--image <file>", "image (PNG, JPEG, WebP, GIF, TIFF)")
      .option("--mask <file>", "mask image of the image's size: non-zero pixels are the region")
      .option("--box <x1,y1,x2,y2>", "box region in pixels")
      .option("--alpha", "use the image's own alpha channel as the region (alpha >= 128)")
      .requiredOption("--out <file>", "output file for the features"),
  )
    .addHelpText("after", "\nWithout --mask, --box or --alpha the whole image is the region.")
    .action(async (opts: EncodeCliOptions) => {
      const regionFlags = [opts.mask, opts.box, opts.alpha].filter(
        (v) => v !== undefined && v !== false,
      ).length;
      if (regionFlags > 1)
        throw new RegionVqaError("invalid_request", "Give at most one of --mask, --box and --alpha.");
      const threads = numberFlag(opts.threads, "--threads", { min: 1, integer: true });
      const logger = {
        info: (m: string) => process.stderr.write(`${m}\n`),
        warn: (m: string) => process.stderr.write(`${m}\n`),
      };
      // Start loading the model while the image is decoded.
      const encoderPromise = AlphaClipEncoder.load(opts.model, { device: opts.device, threads, logger });
      encoderPromise.catch(() => undefined);
      let encoder: AlphaClipEncoder | undefined;
      try {
        const started = performance.now();
        const image = await decodeImage(await readInputFile(opts.image, "image"));
        let mask: Mask;
        let regionKind: string;
        if (opts.mask) {
          mask = regionToMask(
            {
              kind: "mask",
              mask: await decodeMaskImage(await readInputFile(opts.mask, "mask"), image.width, image.height),
            },
            image.width,
            image.height,
          );
          regionKind = "mask";
        } else if (opts.box) {
          mask = regionToMask({ kind: "box", box: parseBoxFlag(opts.box) }, image.width, image.height);
          regionKind = "box";
        } else if (opts.alpha) {
          if (!image.alpha)
            throw new RegionVqaError("region_invalid", `--alpha: ${opts.image} has no alpha channel.`);
          mask = regionToMask(
            { kind: "mask", mask: alphaToMask(image.alpha, image.width, image.height) },
            image.width,
            image.height,
          );
          regionKind = "alpha";
        } else {
          mask = regionToMask({ kind: "whole" }, image.width, image.height);
          regionKind = "whole";
        }
        encoder = await encoderPromise;
        const prepStarted = performance.now();
        // "Whole image" is the no-mask path of the reference: alpha = foreground everywhere, padding included.
        const pre = preprocessForLlava(image, regionKind === "whole" ? null : mask, encoder.imageSize);
        const prepMs = performance.now() - prepStarted;
        const encStarted = performance.now();
        const out = await encoder.encode(pre);
        const encodeMs = performance.now() - encStarted;
        const result = out.features ?? out.projected;
        if (!result)
          throw new RegionVqaError(
            "model_invalid",
            "The vision model produced neither llava_features nor projected.",
          );
        const [, tokens, width] = result.shape;
        const bytes = new Uint8Array(result.data.buffer, result.data.byteOffset, result.data.byteLength);
        // Float32Array is little-endian on every platform Node supports for this project (x64, arm64).
        await writeFile(opts.out, bytes);
        let sum = 0;
        let sumSq = 0;
        for (const v of result.data) {
          sum += v;
          sumSq += v * v;
        }
        const summary = {
          out: opts.out,
          output: out.features ? "llava_features" : "projected",
          shape: [tokens, width],
          dtype: "float32",
          byteOrder: "little-endian",
          image: { width: image.width, height: image.height },
          region: { kind: regionKind, pixels: mask.data.reduce((a, b) => a + b, 0) },
          model: opts.model,
          provider: encoder.provider,
          threads: encoder.threads,
          mean: sum / result.data.length,
          rms: Math.sqrt(sumSq / result.data.length),
          preprocessMs: Math.round(prepMs * 10) / 10,
          encodeMs: Math.round(encodeMs * 10) / 10,
          totalMs: Math.round((performance.now() - started) * 10) / 10,
        };
        process.stdout.write(`${JSON.stringify(summary)}\n`);
      } finally {
        encoder ??= await encoderPromise.catch(() => undefined);
        await encoder?.dispose();
      }
    });
}
