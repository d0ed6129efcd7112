import { readFile } from "node:fs/promises";
import type { Command } from "commander";
import { RegionVqaError } from "../common/errors.js";
import {
  alphaToMask,
  decodeImage,
  decodeMaskImage,
  type Box,
  type PointPrompt,
  type Region,
} from "../vision/index.js";

export interface RegionCliOptions {
  image: string;
  mask?: string;
  box?: string;
  polygon?: string;
  alpha?: boolean;
  /** Repeated --point flags, as given. */
  point?: string[];
  refine?: boolean;
}

/** Collects a repeatable flag's values. */
const collect = (value: string, previous: string[] = []): string[] => [...previous, value];

/**
 * Adds --image and the region flags (--mask | --box | --polygon | --alpha | --point...; none = whole
 * image). Points (and --box with --refine) go to the segmenter.
 */
export function addRegionOptions(cmd: Command): Command {
  return cmd
    .requiredOption("--image <file>", "image (PNG, JPEG, WebP, GIF, TIFF)")
    .option("--mask <file>", "mask image of the image's size: non-zero pixels are the region")
    .option("--box <x1,y1,x2,y2>", "box region in pixels")
    .option("--polygon <json>", "polygon(s) in pixels, COCO style: [x0,y0,x1,y1,...] or [[...],[...]]")
    .option("--alpha", "use the image's own alpha channel as the region (alpha >= 128)")
    .option(
      "--point <x,y[,label]>",
      "a click in pixels (label 1 = include, the default; 0 = exclude); repeat for more; the segmenter makes the region",
      collect,
    )
    .option("--refine", "with --box: the segmenter refines the box into the object's mask");
}

/** "x,y" or "x,y,label" -> a point prompt (label 1 by default). */
export function parsePointFlag(text: string): PointPrompt {
  const parts = text.split(",").map((s) => s.trim());
  const values = parts.map(Number);
  if (
    (parts.length !== 2 && parts.length !== 3) ||
    parts.some((p) => p === "") ||
    values.some((v) => !Number.isFinite(v))
  ) {
    throw new RegionVqaError("point_invalid", `--point must be x,y or x,y,label in pixels, got "${text}".`);
  }
  const label = values[2] ?? 1;
  if (label !== 0 && label !== 1) {
    throw new RegionVqaError("point_invalid", `--point ${text}: the label is 1 (include) or 0 (exclude).`);
  }
  return { x: values[0], y: values[1], label };
}

export function parseBoxFlag(text: string): Box {
  const parts = text.split(",").map((s) => s.trim());
  const values = parts.map(Number);
  if (parts.length !== 4 || parts.some((p) => p === "") || values.some((v) => !Number.isFinite(v))) {
    throw new RegionVqaError(
      "box_invalid",
      `--box must be four numbers x1,y1,x2,y2 in pixels, got "${text}".`,
    );
  }
  return values as Box;
}

export async function readInputFile(file: string, what: string): Promise<Uint8Array> {
  try {
    return new Uint8Array(await readFile(file));
  } catch (err) {
    throw new RegionVqaError("image_missing", `Cannot read the ${what} ${file}: ${(err as Error).message}`);
  }
}

/** Reads the image file and turns the region flags into a Region of that image. */
export async function readImageAndRegion(
  opts: RegionCliOptions,
): Promise<{ image: Uint8Array; region: Region }> {
  const points = (opts.point ?? []).map(parsePointFlag);
  if (opts.refine && !opts.box)
    throw new RegionVqaError("invalid_request", "--refine refines a --box; give one.");
  // Points may come with a box (the segmenter refines it); otherwise one region form at most.
  const prompted = points.length > 0 || opts.refine === true;
  const given = [
    opts.mask,
    prompted ? undefined : opts.box,
    opts.polygon,
    opts.alpha,
    prompted || undefined,
  ].filter((v) => v !== undefined && v !== false);
  if (given.length > 1) {
    throw new RegionVqaError(
      "invalid_request",
      "Give at most one of --mask, --box, --polygon, --alpha and --point (a --box may go with --point or --refine).",
    );
  }
  const image = await readInputFile(opts.image, "image");
  if (prompted) {
    return {
      image,
      region: { kind: "points", points, ...(opts.box ? { box: parseBoxFlag(opts.box) } : {}) },
    };
  }
  if (opts.box) return { image, region: { kind: "box", box: parseBoxFlag(opts.box) } };
  if (opts.polygon) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(opts.polygon);
    } catch {
      throw new RegionVqaError("polygon_invalid", `--polygon must be JSON, got "${opts.polygon}".`);
    }
    const polygons = Array.isArray(parsed) && Array.isArray(parsed[0]) ? parsed : [parsed];
    return { image, region: { kind: "polygon", polygons: polygons as number[][] } };
  }
  if (opts.mask || opts.alpha) {
    const decoded = await decodeImage(image);
    if (opts.alpha) {
      if (!decoded.alpha)
        throw new RegionVqaError("region_invalid", `--alpha: ${opts.image} has no alpha channel.`);
      return {
        image,
        region: { kind: "mask", mask: alphaToMask(decoded.alpha, decoded.width, decoded.height) },
      };
    }
    const mask = await decodeMaskImage(
      await readInputFile(opts.mask!, "mask"),
      decoded.width,
      decoded.height,
    );
    return { image, region: { kind: "mask", mask } };
  }
  return { image, region: { kind: "whole" } };
}
