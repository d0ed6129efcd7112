/** Plain data passed between the vision stage's steps and to its callers. */

/** 8-bit RGB image, rows top to bottom, HWC interleaved. */
export interface RgbImage {
  width: number;
  height: number;
  data: Uint8Array;
}

/** Binary mask of an image's size: 1 = inside the region, 0 = outside. */
export interface Mask {
  width: number;
  height: number;
  data: Uint8Array;
}

export type Box = [x1: number, y1: number, x2: number, y2: number];
/** A polygon as a flat list [x0, y0, x1, y1, ...] in pixels (COCO style). */
export type Polygon = number[];
/** COCO run-length encoding: `counts` is a compressed string or a list of run lengths (column-major). */
export interface CocoRle {
  size: [height: number, width: number];
  counts: string | number[];
}

/** A point prompt in image pixels: label 1 = the region includes it, 0 = it does not. */
export interface PointPrompt {
  x: number;
  y: number;
  label: 0 | 1;
}

export type Region =
  | { kind: "mask"; mask: Mask }
  | { kind: "box"; box: Box }
  | { kind: "polygon"; polygons: Polygon[] }
  | { kind: "rle"; rle: CocoRle }
  /** Clicks (and optionally a box) that a segmenter turns into a mask: see src/segmenter. */
  | { kind: "points"; points: PointPrompt[]; box?: Box }
  | { kind: "whole" };
