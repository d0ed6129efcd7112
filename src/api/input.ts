/**
 * Request bodies (JSON or multipart) -> image bytes and checked regions. Structure is checked here
 * with precise error codes; pixels are checked by the vision stage (`decodeImage`, `regionToMask`),
 * so every region reaching the pipeline is a non-empty mask of the image's size.
 */
import { RegionVqaError, type ErrorCode } from "../common/errors.js";
import { checkRegionCount } from "../common/limits.js";
import type { ServerLimits } from "../config.js";
import { decodeImage, decodeMaskImage, type DecodedImage } from "../vision/decode.js";
import { alphaToMaskAsync, regionToMaskAsync } from "../vision/region.js";
import { MAX_PROMPT_POINTS, NO_SEGMENTER_MESSAGE, type SegmentPrompt } from "../segmenter/index.js";
import type { Box, CocoRle, Mask, PointPrompt, Polygon, Region, RgbImage } from "../vision/types.js";

/** A region as a request states it, before the image is decoded. */
export type RegionSpec =
  | Region
  /** Encoded mask image (PNG, ...): white = region; decoded against the image's size. */
  | { kind: "maskImage"; bytes: Uint8Array }
  /** The image's own alpha channel. */
  | { kind: "alpha" };

const base64Pattern = /^[A-Za-z0-9+/_-]*={0,2}$/;

/**
 * Image bytes from a multipart file (Buffer) or a JSON string: a data URL (`data:image/png;base64,...`)
 * or bare base64.
 */
export function bytesFromField(
  value: unknown,
  field: string,
  codes: { missing: ErrorCode; undecodable: ErrorCode },
): Uint8Array {
  if (value === undefined || value === null || value === "") {
    throw new RegionVqaError(codes.missing, `The request has no ${field}.`);
  }
  if (value instanceof Uint8Array) {
    if (value.length === 0) throw new RegionVqaError(codes.missing, `The uploaded ${field} is empty.`);
    return value;
  }
  if (typeof value !== "string") {
    throw new RegionVqaError(
      codes.undecodable,
      `The ${field} must be a file upload, a base64 string or a data URL, not ${describe(value)}.`,
    );
  }
  let payload = value.trim();
  if (payload.startsWith("data:")) {
    const comma = payload.indexOf(",");
    const header = comma < 0 ? "" : payload.slice(5, comma);
    if (comma < 0 || !/;base64$/i.test(header)) {
      throw new RegionVqaError(
        codes.undecodable,
        `The ${field} data URL must be base64-encoded ("data:<type>;base64,...").`,
      );
    }
    payload = payload.slice(comma + 1);
  }
  payload = payload.replace(/\s+/g, "");
  if (!base64Pattern.test(payload) || payload.length % 4 === 1) {
    throw new RegionVqaError(codes.undecodable, `The ${field} is not valid base64 (nor a data URL).`);
  }
  const bytes = Buffer.from(payload, payload.includes("-") || payload.includes("_") ? "base64url" : "base64");
  if (bytes.length === 0) throw new RegionVqaError(codes.missing, `The ${field} is empty.`);
  return bytes;
}

function describe(value: unknown): string {
  if (Array.isArray(value)) return "a list";
  if (value === null) return "null";
  return `a ${typeof value}`;
}

/** Multipart fields arrive as text: a field holding JSON is parsed here, with its name in the error. */
function maybeJson(value: unknown, field: string, code: ErrorCode): unknown {
  if (value instanceof Uint8Array) value = Buffer.from(value).toString("utf8");
  if (typeof value !== "string") return value;
  const text = value.trim();
  if (!(text.startsWith("{") || text.startsWith("[") || text.startsWith('"'))) return value;
  try {
    return JSON.parse(text);
  } catch {
    throw new RegionVqaError(code, `The ${field} field is not valid JSON.`);
  }
}

function parseBox(value: unknown): Box {
  value = maybeJson(value, "box", "box_invalid");
  let numbers: unknown[];
  if (typeof value === "string") {
    numbers = value.split(",").map((s) => (s.trim() === "" ? NaN : Number(s)));
  } else if (Array.isArray(value)) {
    numbers = value;
  } else if (value && typeof value === "object" && "x1" in value) {
    const o = value as Record<string, unknown>;
    numbers = [o.x1, o.y1, o.x2, o.y2];
  } else {
    throw new RegionVqaError(
      "box_invalid",
      `A box must be "x1,y1,x2,y2" or [x1, y1, x2, y2], not ${describe(value)}.`,
    );
  }
  if (numbers.length !== 4 || !numbers.every((n) => typeof n === "number" && Number.isFinite(n))) {
    throw new RegionVqaError("box_invalid", "A box must be four finite numbers x1, y1, x2, y2 (pixels).");
  }
  return numbers as Box;
}

function parsePolygons(value: unknown, maxPoints: number): Polygon[] {
  value = maybeJson(value, "polygon", "polygon_invalid");
  if (!Array.isArray(value) || value.length === 0) {
    throw new RegionVqaError(
      "polygon_invalid",
      "A polygon must be a list: [x0, y0, x1, y1, ...], [[x, y], ...] or a list of such rings.",
    );
  }
  const isNumber = (n: unknown) => typeof n === "number" && Number.isFinite(n);
  let rings: unknown[][];
  if (value.every(isNumber)) {
    rings = [value];
  } else if (value.every((p) => Array.isArray(p) && p.length === 2 && p.every(isNumber))) {
    rings = [(value as number[][]).flat()]; // [[x, y], ...]: one ring of points
  } else if (value.every((r) => Array.isArray(r))) {
    rings = (value as unknown[][]).map((r) =>
      r.every((p) => Array.isArray(p) && p.length === 2) ? (r as unknown[][]).flat() : r,
    );
  } else {
    throw new RegionVqaError("polygon_invalid", "A polygon must hold only finite numbers.");
  }
  let points = 0;
  for (const ring of rings) {
    if (!ring.every(isNumber))
      throw new RegionVqaError("polygon_invalid", "A polygon must hold only finite numbers.");
    if (ring.length % 2 !== 0 || ring.length < 6) {
      throw new RegionVqaError("polygon_invalid", "Each polygon ring needs at least 3 points as x, y pairs.");
    }
    points += ring.length / 2;
  }
  if (points > maxPoints) {
    throw new RegionVqaError(
      "polygon_invalid",
      `The polygon has ${points} points; the limit is ${maxPoints}.`,
    );
  }
  return rings as Polygon[];
}

function parseRle(value: unknown): CocoRle {
  value = maybeJson(value, "rle", "rle_invalid");
  const o = value as Record<string, unknown> | null;
  if (!o || typeof o !== "object" || Array.isArray(o)) {
    throw new RegionVqaError(
      "rle_invalid",
      'An RLE must be an object {"size": [height, width], "counts": ...}.',
    );
  }
  const size = o.size;
  if (!Array.isArray(size) || size.length !== 2 || !size.every((n) => Number.isInteger(n) && n > 0)) {
    throw new RegionVqaError(
      "rle_invalid",
      "The RLE's size must be [height, width] (positive whole numbers).",
    );
  }
  const counts = o.counts;
  const countsOk =
    typeof counts === "string" ||
    (Array.isArray(counts) && counts.every((n) => Number.isInteger(n) && n >= 0));
  if (!countsOk) {
    throw new RegionVqaError(
      "rle_invalid",
      "The RLE's counts must be a COCO string or a list of whole numbers >= 0.",
    );
  }
  return { size: size as [number, number], counts: counts as string | number[] };
}

/**
 * Point prompts: [[x, y], [x, y, label], ...] (label 1 = include, the default; 0 = exclude) or one
 * [x, y(, label)]; multipart sends the same as JSON text. Whether they lie inside the image is checked
 * once the image is decoded.
 */
export function parsePoints(value: unknown): PointPrompt[] {
  value = maybeJson(value, "points", "point_invalid");
  const isNumber = (n: unknown) => typeof n === "number";
  if (Array.isArray(value) && value.length > 0 && value.every(isNumber)) value = [value];
  if (!Array.isArray(value) || value.length === 0) {
    throw new RegionVqaError(
      "point_invalid",
      "Points must be a non-empty list: [[x, y], [x, y, label], ...] in pixels, label 1 = include, 0 = exclude.",
    );
  }
  if (value.length > MAX_PROMPT_POINTS) {
    throw new RegionVqaError(
      "too_many_points",
      `The region has ${value.length} points; the limit is ${MAX_PROMPT_POINTS}.`,
      { points: value.length, maxPoints: MAX_PROMPT_POINTS },
    );
  }
  return value.map((p, i) => {
    if (!Array.isArray(p) || (p.length !== 2 && p.length !== 3) || !p.every(isNumber)) {
      throw new RegionVqaError("point_invalid", `Point ${i} must be [x, y] or [x, y, label] (numbers).`);
    }
    const [x, y, label = 1] = p as number[];
    if (!Number.isFinite(x) || !Number.isFinite(y)) {
      throw new RegionVqaError("point_invalid", `Point ${i} must have finite coordinates.`);
    }
    if (label !== 0 && label !== 1) {
      throw new RegionVqaError(
        "point_invalid",
        `Point ${i} has label ${label}; a label is 1 (include) or 0 (exclude).`,
      );
    }
    return { x, y, label };
  });
}

function isTrue(value: unknown): boolean {
  if (value instanceof Uint8Array) value = Buffer.from(value).toString("utf8");
  return value === true || value === "true" || value === "1";
}

/**
 * One region as JSON: "whole" | "alpha" | {mask} | {box} | {polygon} | {rle} | {points} (optionally
 * with a box that the segmenter refines) | {box, refine: true}, or the same with a `kind` field
 * ({kind: "box", box: [...]}).
 */
export function parseRegion(value: unknown, limits: ServerLimits, where = "region"): RegionSpec {
  value = maybeJson(value, where, "region_invalid");
  if (value === "whole" || value === "alpha") return { kind: value };
  if (!value || typeof value !== "object" || Array.isArray(value)) {
    throw new RegionVqaError(
      "region_invalid",
      `The ${where} must be "whole", "alpha" or an object with one of mask, box, polygon, rle, points; got ${describe(value)}.`,
    );
  }
  const o = value as Record<string, unknown>;
  // A box with points (or with refine) is a prompt for the segmenter, not a box region.
  if (o.points !== undefined || (o.box !== undefined && isTrue(o.refine))) {
    return {
      kind: "points",
      points: o.points === undefined ? [] : parsePoints(o.points),
      ...(o.box !== undefined ? { box: parseBox(o.box) } : {}),
    };
  }
  const forms = ["mask", "box", "polygon", "polygons", "rle"].filter((k) => o[k] !== undefined);
  const kind = typeof o.kind === "string" ? o.kind : forms.length === 1 ? forms[0] : undefined;
  if (kind === undefined) {
    throw new RegionVqaError(
      "region_invalid",
      forms.length === 0
        ? `The ${where} has none of mask, box, polygon, rle, points.`
        : `The ${where} has more than one of mask, box, polygon, rle (${forms.join(", ")}); give one (points may come with a box).`,
    );
  }
  switch (kind) {
    case "whole":
    case "alpha":
      return { kind };
    case "mask":
      return {
        kind: "maskImage",
        bytes: bytesFromField(o.mask, "mask", {
          missing: "mask_undecodable",
          undecodable: "mask_undecodable",
        }),
      };
    case "box":
      return { kind: "box", box: parseBox(o.box) };
    case "polygon":
    case "polygons":
      return { kind: "polygon", polygons: parsePolygons(o.polygon ?? o.polygons, limits.maxPolygonPoints) };
    case "rle":
      return { kind: "rle", rle: parseRle(o.rle) };
    default:
      throw new RegionVqaError(
        "region_invalid",
        `Unknown region kind "${kind}"; expected mask, box, polygon, rle, points, whole or alpha.`,
      );
  }
}

const asList = (v: unknown): unknown[] => (v === undefined || v === null ? [] : Array.isArray(v) ? v : [v]);

/**
 * Every region a body states, in order: `regions` (a list), `region`, then the top-level `mask`
 * (file(s) or base64), `box`, `polygon`, `rle` and `points` fields. Multipart may repeat `mask` and
 * `box`. Top-level `points` take the one top-level `box` with them (the segmenter refines it), and so
 * does `refine: true` without points.
 */
export function regionSpecsFromBody(body: Record<string, unknown>, limits: ServerLimits): RegionSpec[] {
  const specs: RegionSpec[] = [];
  const regions = maybeJson(body.regions, "regions", "region_invalid");
  if (regions !== undefined) {
    if (!Array.isArray(regions))
      throw new RegionVqaError("region_invalid", "`regions` must be a list of regions.");
    regions.forEach((r, i) => specs.push(parseRegion(r, limits, `regions[${i}]`)));
  }
  if (body.region !== undefined && body.region !== "") specs.push(parseRegion(body.region, limits));
  for (const m of asList(body.mask)) {
    specs.push({
      kind: "maskImage",
      bytes: bytesFromField(m, "mask", { missing: "mask_undecodable", undecodable: "mask_undecodable" }),
    });
  }
  // A JSON box is one list of four numbers; multipart repeats the field as strings.
  const boxes =
    Array.isArray(body.box) && body.box.every((b) => typeof b === "number") ? [body.box] : asList(body.box);
  const prompted = body.points !== undefined && body.points !== "";
  if (prompted || (boxes.length > 0 && isTrue(body.refine))) {
    if (boxes.length > 1) {
      throw new RegionVqaError(
        "box_invalid",
        "Points (or refine) take at most one box: the segmenter refines one box.",
      );
    }
    specs.push({
      kind: "points",
      points: prompted ? parsePoints(body.points) : [],
      ...(boxes.length === 1 ? { box: parseBox(boxes[0]) } : {}),
    });
  } else {
    for (const b of boxes) specs.push({ kind: "box", box: parseBox(b) });
  }
  if (body.polygon !== undefined)
    specs.push({ kind: "polygon", polygons: parsePolygons(body.polygon, limits.maxPolygonPoints) });
  if (body.rle !== undefined) specs.push({ kind: "rle", rle: parseRle(body.rle) });
  checkRegionCount(specs.length, limits.maxRegions);
  return specs;
}

export interface ResolvedImage {
  width: number;
  height: number;
  /** Region(s) as non-empty masks of the image's size ("whole" stays "whole"). */
  regions: Region[];
  /** The decoded image, handed to the pipeline so that it does not decode the bytes again. */
  decoded: RgbImage;
  /** How long decoding took: the "decode" stage of the metrics, now done here rather than in the pipeline. */
  decodeSeconds: number;
}

/**
 * Decodes the image (limits checked from its header first) and turns every spec into a checked region.
 * No spec means: the image's alpha channel when it has one, else the whole image.
 */
/**
 * Decodes a request's image with the server's limits: bytes and pixels (checked from the header
 * first) and the longest side.
 */
export async function decodeRequestImage(
  image: Uint8Array,
  limits: ServerLimits,
): Promise<{ decoded: DecodedImage; decodeSeconds: number }> {
  // Bytes, pixels and the longest side are checked from the header, before any decoding is queued.
  const decodeLimits = {
    maxBytes: limits.maxBodyBytes,
    maxPixels: limits.maxImagePixels,
    maxSide: limits.maxImageSide,
  };
  const started = performance.now();
  const decoded = await decodeImage(image, decodeLimits);
  const decodeSeconds = (performance.now() - started) / 1000;
  return { decoded, decodeSeconds };
}

/** Turns a prompt on the decoded image into a mask (the pipeline's segmenter); absent when none is loaded. */
export type SegmentFn = (decoded: DecodedImage, prompt: SegmentPrompt) => Promise<Mask>;

export async function resolveRegions(
  image: Uint8Array,
  specs: RegionSpec[],
  limits: ServerLimits,
  segment?: SegmentFn,
): Promise<ResolvedImage> {
  const { decoded, decodeSeconds } = await decodeRequestImage(image, limits);
  const { width, height } = decoded;
  const decodeLimits = { maxBytes: limits.maxBodyBytes, maxPixels: limits.maxImagePixels };
  if (specs.length === 0) specs = [decoded.alpha ? { kind: "alpha" } : { kind: "whole" }];
  const regions: Region[] = [];
  for (const spec of specs) {
    switch (spec.kind) {
      case "whole":
        regions.push(spec);
        break;
      case "alpha":
        if (!decoded.alpha) {
          throw new RegionVqaError(
            "region_invalid",
            "The region is the image's alpha channel, but the image has none.",
          );
        }
        regions.push(
          await checked(
            { kind: "mask", mask: await alphaToMaskAsync(decoded.alpha, width, height) },
            width,
            height,
          ),
        );
        break;
      case "points":
        if (!segment) throw new RegionVqaError("segmenter_not_installed", NO_SEGMENTER_MESSAGE);
        regions.push(await checked({ kind: "mask", mask: await segment(decoded, spec) }, width, height));
        break;
      case "maskImage":
        regions.push(
          await checked(
            { kind: "mask", mask: await decodeMaskImage(spec.bytes, width, height, decodeLimits) },
            width,
            height,
          ),
        );
        break;
      default:
        regions.push(await checked(spec, width, height));
    }
  }
  return { width, height, regions, decoded, decodeSeconds };
}

async function checked(region: Region, width: number, height: number): Promise<Region> {
  return { kind: "mask", mask: await regionToMaskAsync(region, width, height) };
}
