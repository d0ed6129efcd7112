import { RegionVqaError } from "../common/errors.js";
import type { Mask, Polygon } from "./types.js";

/**
 * Rasterise COCO-style polygons (flat [x0, y0, x1, y1, ...] lists in pixel coordinates). A pixel
 * (x, y) is inside a polygon when its centre (x + 0.5, y + 0.5) is inside by the even-odd rule; several
 * polygons (one object split in parts, as COCO stores them) are united. Parts outside the image are
 * clipped.
 */
export function rasterizePolygons(polygons: readonly Polygon[], width: number, height: number): Mask {
  checkPolygons(polygons);
  const data = new Uint8Array(width * height);
  for (const poly of polygons) fillEvenOdd(poly, width, height, data);
  return { width, height, data };
}

/** Throws `polygon_invalid` unless `polygons` is a non-empty list of rings of >= 3 finite points. */
export function checkPolygons(polygons: readonly Polygon[]): void {
  if (!Array.isArray(polygons) || polygons.length === 0) {
    throw new RegionVqaError("polygon_invalid", "Invalid polygon: expected a non-empty list of polygons.");
  }
  polygons.forEach((poly, pi) => {
    if (!Array.isArray(poly) || poly.length < 6 || poly.length % 2 !== 0) {
      throw new RegionVqaError(
        "polygon_invalid",
        `Invalid polygon ${pi}: needs a flat list of at least 3 points [x0, y0, x1, y1, x2, y2, ...] (even length), got ${Array.isArray(poly) ? poly.length : typeof poly} values.`,
      );
    }
    for (let i = 0; i < poly.length; i++) {
      if (typeof poly[i] !== "number" || !Number.isFinite(poly[i])) {
        throw new RegionVqaError(
          "polygon_invalid",
          `Invalid polygon ${pi}: value ${i} (${String(poly[i])}) is not a finite number.`,
        );
      }
    }
  });
}

function fillEvenOdd(poly: Polygon, width: number, height: number, out: Uint8Array): void {
  const n = poly.length / 2;
  const crossings: number[] = [];
  const row = new Uint8Array(width);
  for (let y = 0; y < height; y++) {
    const cy = y + 0.5;
    crossings.length = 0;
    for (let i = 0, j = n - 1; i < n; j = i++) {
      const xi = poly[2 * i];
      const yi = poly[2 * i + 1];
      const xj = poly[2 * j];
      const yj = poly[2 * j + 1];
      // Half-open rule on y so that a vertex on the scan line is counted once.
      if (yi > cy !== yj > cy) crossings.push(xi + ((cy - yi) * (xj - xi)) / (yj - yi));
    }
    if (crossings.length < 2) continue;
    crossings.sort((a, b) => a - b);
    row.fill(0);
    for (let k = 0; k + 1 < crossings.length; k += 2) {
      // Pixel centres x + 0.5 in [a, b): x from ceil(a - 0.5) to ceil(b - 0.5) - 1.
      const from = Math.max(0, Math.ceil(crossings[k] - 0.5));
      const to = Math.min(width, Math.ceil(crossings[k + 1] - 0.5));
      for (let x = from; x < to; x++) row[x] = 1;
    }
    const base = y * width;
    for (let x = 0; x < width; x++) if (row[x]) out[base + x] = 1;
  }
}
