/**
 * Every region form -> a 0/1 mask of the image's size. The synchronous functions are the
 * specification; the `...Async` ones give the same masks as jobs of an `ImagingPool` (native, off
 * the event loop), checking their input with the same errors first.
 */
import { RegionVqaError } from "../common/errors.js";
import { thresholdBytes, uninitializedBytes } from "../common/imaging/kernels.js";
import { ImagingPool } from "../common/imaging/pool.js";
import { checkPolygons, rasterizePolygons } from "./polygon.js";
import { decodeRle, rleRunLengths } from "./rle.js";
import type { Box, Mask, Region } from "./types.js";

/** Alpha levels at or above this are inside the region ("alpha channel of an RGBA image" regions). */
export const ALPHA_REGION_THRESHOLD = 128;

function countOnes(mask: Mask): number {
  let n = 0;
  for (let i = 0; i < mask.data.length; i++) n += mask.data[i];
  return n;
}

/**
 * An image's alpha channel as a region: pixels with alpha >= 128 (at least half opaque) are inside.
 * Half-opaque is the threshold because soft cut-out edges should neither grow nor shrink the region.
 */
export function alphaToMask(alpha: Uint8Array, width: number, height: number): Mask {
  if (alpha.length !== width * height) {
    throw new RegionVqaError(
      "mask_size_mismatch",
      `The alpha channel has ${alpha.length} values; the image has ${width * height} pixels.`,
    );
  }
  const data = new Uint8Array(width * height);
  for (let i = 0; i < data.length; i++) data[i] = alpha[i] >= ALPHA_REGION_THRESHOLD ? 1 : 0;
  return { width, height, data };
}

/**
 * A box [x1, y1, x2, y2] in pixel coordinates (x to the right, y down, the image spans [0, W] x [0, H]).
 * Pixel (x, y) is inside when its centre (x + 0.5, y + 0.5) lies in [x1, x2) x [y1, y2). Boxes reaching
 * outside the image are refused rather than clamped: a wrong coordinate system should fail loudly.
 */
export function boxToMask(box: Box, width: number, height: number): Mask {
  const { xFrom, xTo, yFrom, yTo } = boxPixels(box, width, height);
  const data = new Uint8Array(width * height);
  for (let y = yFrom; y < yTo; y++) data.fill(1, y * width + xFrom, y * width + xTo);
  return { width, height, data };
}

/** The pixel columns [xFrom, xTo) and rows [yFrom, yTo) a box covers; throws `box_invalid`. */
function boxPixels(
  box: Box,
  width: number,
  height: number,
): { xFrom: number; xTo: number; yFrom: number; yTo: number } {
  if (!Array.isArray(box) || box.length !== 4) {
    throw new RegionVqaError("box_invalid", "Invalid box: expected [x1, y1, x2, y2].");
  }
  if (!box.every((v) => typeof v === "number" && Number.isFinite(v))) {
    throw new RegionVqaError(
      "box_invalid",
      `Invalid box [${box.join(", ")}]: all four values must be finite numbers.`,
    );
  }
  const [x1, y1, x2, y2] = box;
  if (!(x2 > x1) || !(y2 > y1)) {
    throw new RegionVqaError("box_invalid", `Invalid box [${box.join(", ")}]: needs x2 > x1 and y2 > y1.`);
  }
  if (x1 < 0 || y1 < 0 || x2 > width || y2 > height) {
    throw new RegionVqaError(
      "box_invalid",
      `Invalid box [${box.join(", ")}]: it reaches outside the ${width}x${height} image (valid: 0 <= x1 < x2 <= ${width}, 0 <= y1 < y2 <= ${height}).`,
    );
  }
  return {
    xFrom: Math.ceil(x1 - 0.5),
    xTo: Math.ceil(x2 - 0.5),
    yFrom: Math.ceil(y1 - 0.5),
    yTo: Math.ceil(y2 - 0.5),
  };
}

function checkMaskShape(mask: Mask, width: number, height: number): void {
  if (!mask || !(mask.data instanceof Uint8Array)) {
    throw new RegionVqaError(
      "region_invalid",
      "Invalid mask region: expected {width, height, data: Uint8Array}.",
    );
  }
  if (mask.width !== width || mask.height !== height) {
    throw new RegionVqaError(
      "mask_size_mismatch",
      `The mask is ${mask.width}x${mask.height} but the image is ${width}x${height}; masks must have the image's size.`,
    );
  }
  if (mask.data.length !== width * height) {
    throw new RegionVqaError(
      "region_invalid",
      `The mask has ${mask.data.length} values; ${width}x${height} needs ${width * height}.`,
    );
  }
}

function checkMask(mask: Mask, width: number, height: number): Mask {
  checkMaskShape(mask, width, height);
  const data = new Uint8Array(width * height);
  for (let i = 0; i < data.length; i++) data[i] = mask.data[i] ? 1 : 0;
  return { width, height, data };
}

function emptyRegion(kind: string, width: number, height: number): RegionVqaError {
  return new RegionVqaError(
    "region_empty",
    `The ${kind} region covers no pixel of the ${width}x${height} image.`,
  );
}

/**
 * Any region form -> a 0/1 mask of the image's size. Throws `region_empty` when no pixel is inside
 * (an empty region would silently mean "background only" to the encoder), and the form's own error
 * code (`box_invalid`, `polygon_invalid`, `rle_invalid`, `mask_size_mismatch`, `region_invalid`) for
 * malformed input.
 */
export function regionToMask(region: Region, width: number, height: number): Mask {
  if (!region || typeof region !== "object")
    throw new RegionVqaError("region_invalid", "Invalid region: expected an object with a `kind`.");
  let mask: Mask;
  switch (region.kind) {
    case "whole":
      return { width, height, data: new Uint8Array(width * height).fill(1) };
    case "mask":
      mask = checkMask(region.mask, width, height);
      break;
    case "box":
      mask = boxToMask(region.box, width, height);
      break;
    case "polygon":
      mask = rasterizePolygons(region.polygons, width, height);
      break;
    case "rle":
      mask = decodeRle(region.rle, width, height);
      break;
    case "points":
      // Clicks become a mask only through a segmenter (src/segmenter), which callers run first.
      throw new RegionVqaError(
        "segmenter_not_installed",
        "A points region needs a segmenter to turn the clicks into a mask, and none is loaded.",
      );
    default:
      throw unknownKind(region);
  }
  if (countOnes(mask) === 0) throw emptyRegion(region.kind, width, height);
  return mask;
}

function unknownKind(region: unknown): RegionVqaError {
  return new RegionVqaError(
    "region_invalid",
    `Unknown region kind ${JSON.stringify((region as { kind?: unknown }).kind)}; expected mask, box, polygon, rle, points or whole.`,
  );
}

/**
 * Masks made by the `...Async` functions: 0/1 and of the size they say. Passed in again (the API
 * checks regions, then the pipeline does), they are used as they are instead of being checked and
 * copied a second time. Masks are treated as immutable once made.
 */
const checkedMasks = new WeakSet<Uint8Array>();

function checkedMask(width: number, height: number, data: Uint8Array): Mask {
  checkedMasks.add(data);
  return { width, height, data };
}

/**
 * A 0/1 mask of its stated size made elsewhere (a decoded mask image, a segmenter's mask) with its
 * pixel count: when it is not empty, `regionToMaskAsync` takes it as it is.
 */
export function knownMask(mask: Mask, area: number): Mask {
  return area > 0 ? checkedMask(mask.width, mask.height, mask.data) : mask;
}

/** `alphaToMask` as a job of `pool` (off the event loop with the native addon). */
export async function alphaToMaskAsync(
  alpha: Uint8Array,
  width: number,
  height: number,
  pool: ImagingPool = ImagingPool.shared(),
): Promise<Mask> {
  if (alpha.length !== width * height) alphaToMask(alpha, width, height); // throws mask_size_mismatch
  const { data, area } = await thresholdBytes(pool, alpha, ALPHA_REGION_THRESHOLD);
  return knownMask({ width, height, data }, area);
}

/** A mask of 1 inside the pixel rectangle [left, right) x [top, bottom): a box, or the whole image. */
function rectangleMask(
  pool: ImagingPool,
  width: number,
  height: number,
  left: number,
  top: number,
  right: number,
  bottom: number,
): Promise<{ data: Uint8Array; area: number }> {
  return pool.run(
    async (addon, threads) => {
      const data = uninitializedBytes(width * height);
      const area = await addon.fill({ out: data, width, height, left, top, right, bottom, threads });
      return { data, area };
    },
    () => {
      const data = new Uint8Array(width * height);
      for (let y = top; y < bottom; y++) data.fill(1, y * width + left, y * width + right);
      return { data, area: Math.max(0, right - left) * Math.max(0, bottom - top) };
    },
  );
}

/**
 * `regionToMask` as jobs of `pool`: the same masks and the same errors (input checks happen before
 * any job is queued; `region_empty` once the mask is made).
 */
export async function regionToMaskAsync(
  region: Region,
  width: number,
  height: number,
  pool: ImagingPool = ImagingPool.shared(),
): Promise<Mask> {
  if (!region || typeof region !== "object")
    throw new RegionVqaError("region_invalid", "Invalid region: expected an object with a `kind`.");
  let data: Uint8Array;
  let area: number;
  switch (region.kind) {
    case "whole":
      ({ data } = await rectangleMask(pool, width, height, 0, 0, width, height));
      return { width, height, data };
    case "mask": {
      checkMaskShape(region.mask, width, height);
      if (checkedMasks.has(region.mask.data)) {
        // Made here before, and found non-empty then (an empty one was refused).
        return region.mask;
      }
      ({ data, area } = await thresholdBytes(pool, region.mask.data, 1));
      break;
    }
    case "box": {
      const { xFrom, xTo, yFrom, yTo } = boxPixels(region.box, width, height);
      ({ data, area } = await rectangleMask(pool, width, height, xFrom, yFrom, xTo, yTo));
      break;
    }
    case "polygon": {
      const polygons = region.polygons;
      checkPolygons(polygons);
      let out: Uint8Array = new Uint8Array(0);
      area = await pool.run(
        (addon, threads) => {
          out = uninitializedBytes(width * height);
          const ringStarts = new Int32Array(polygons.length + 1);
          polygons.forEach((p, i) => (ringStarts[i + 1] = ringStarts[i] + p.length));
          const coords = new Float64Array(ringStarts[polygons.length]);
          polygons.forEach((p, i) => coords.set(p, ringStarts[i]));
          return addon.polygons({ coords, ringStarts, width, height, out, threads });
        },
        () => {
          out = rasterizePolygons(polygons, width, height).data;
          return countOnes({ width, height, data: out });
        },
      );
      data = out;
      break;
    }
    case "rle": {
      const counts = rleRunLengths(region.rle, width, height);
      const rle = region.rle;
      let out: Uint8Array = new Uint8Array(0);
      area = await pool.run(
        (addon, threads) => {
          out = uninitializedBytes(width * height);
          return addon.rle({ counts: Float64Array.from(counts), width, height, out, threads });
        },
        () => {
          out = decodeRle(rle, width, height).data;
          return countOnes({ width, height, data: out });
        },
      );
      data = out;
      break;
    }
    case "points":
      return regionToMask(region, width, height); // throws segmenter_not_installed
    default:
      throw unknownKind(region);
  }
  if (area === 0) throw emptyRegion(region.kind, width, height);
  return checkedMask(width, height, data);
}
