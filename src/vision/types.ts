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

export type Region =
  | { kind: "mask"; mask: Mask }
  | { kind: "box"; box: Box }
  | { kind: "polygon"; polygons: Polygon[] }
  | { kind: "rle"; rle: CocoRle }
  | { kind: "whole" };
