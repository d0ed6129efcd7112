import { writeFile } from "node:fs/promises";
import { Command, Option } from "commander";
import { RegionVqaError } from "../../common/errors.js";
import { ORT_DEVICES, type OrtDevice } from "../../common/ort/index.js";
import { resolveModelOptions } from "../../models/index.js";
import { NO_SEGMENTER_MESSAGE, SamSegmenter } from "../../segmenter/index.js";
import { decodeImage, encodeMaskPng } from "../../vision/index.js";
import { numberFlag } from "../number-flag.js";
import { parseBoxFlag, parsePointFlag, readInputFile } from "../region-args.js";

interface SegmentCliOptions {
  image: string;
  point?: string[];
  box?: string;
  out: string;
  model?: string;
  segmenter?: string;
  device?: string;
  threads?: string;
  json?: boolean;
}

/**
 * `region-vqa segment`: clicks and/or a box on an image -> the segmenter's mask as a single-channel
 * PNG of the image's size (255 inside), and its score on stdout.
 */
export function register(program: Command): void {
  program
    .command("segment")
    .description("turn clicks (and/or a box) on an image into a region mask with the segmenter (SAM)")
    .requiredOption("--image <file>", "image (PNG, JPEG, WebP, GIF, TIFF)")
    .option(
      "--point <x,y[,label]>",
      "a click in pixels (label 1 = include, the default; 0 = exclude); repeat for more",
      (v: string, prev: string[] = []) => [...prev, v],
    )
    .option("--box <x1,y1,x2,y2>", "a box in pixels for the segmenter to refine (with or without points)")
    .requiredOption("--out <mask.png>", "where to write the mask (single-channel PNG, 255 = inside)")
    .option("--model <name|dir>", "model preset whose segmenter to use; default: the bundled model")
    .option("--segmenter <dir>", "segmenter folder (overrides --model)")
    .addOption(
      new Option("--device <device>", "ONNX Runtime device (default auto)").choices([...ORT_DEVICES]),
    )
    .option("--threads <n>", "ONNX Runtime threads (default: all cores)")
    .option("--json", "print the score, area, candidates and timings as JSON instead of the score alone")
    .action(async (opts: SegmentCliOptions) => {
      const points = (opts.point ?? []).map(parsePointFlag);
      const box = opts.box ? parseBoxFlag(opts.box) : undefined;
      if (points.length === 0 && !box) {
        throw new RegionVqaError("point_invalid", "Give at least one --point (or a --box).");
      }
      const threads = numberFlag(opts.threads, "--threads", { min: 1, integer: true });
      const [bytes, models] = await Promise.all([
        readInputFile(opts.image, "image"),
        resolveModelOptions({ preset: opts.model, segmenter: opts.segmenter }),
      ]);
      if (!models.segmenter) throw new RegionVqaError("segmenter_not_installed", NO_SEGMENTER_MESSAGE);
      const image = await decodeImage(bytes);
      const segmenter = await SamSegmenter.load(models.segmenter, {
        device: opts.device as OrtDevice | undefined,
        threads,
      });
      try {
        const result = await segmenter.segment(image, { points, box }, { allCandidates: opts.json });
        await writeFile(opts.out, await encodeMaskPng(result.mask));
        if (opts.json) {
          const summary = {
            score: result.score,
            index: result.index,
            area: result.area,
            objectScore: result.objectScore,
            candidates: result.candidates.map((c) => ({ score: c.score, area: c.area })),
            timings: result.timings,
            out: opts.out,
          };
          process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
        } else {
          process.stdout.write(`${result.score.toFixed(4)}\n`);
        }
      } finally {
        await segmenter.dispose();
      }
    });
}
