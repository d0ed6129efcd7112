/**
 * The shapes world: scenes of 2-4 filled shapes on light grey, generated from (seed, index) and
 * rasterised exactly (a pixel is filled when its centre lies inside the shape; no anti-aliasing).
 * Bit-identical to tools/shapes/world.py, which renders the training data.
 */
import type { Box, Mask, RgbImage } from "../vision/types.js";
import { sceneRng } from "./prng.js";

export const SHAPES = ["circle", "square", "triangle", "star"] as const;
export type ShapeName = (typeof SHAPES)[number];
export const COLOURS = {
  red: [220, 40, 40],
  green: [40, 170, 60],
  blue: [40, 80, 220],
  yellow: [230, 200, 30],
  purple: [140, 60, 180],
  orange: [240, 140, 30],
} as const satisfies Record<string, readonly [number, number, number]>;
export type ColourName = keyof typeof COLOURS;
export const COLOUR_NAMES = Object.keys(COLOURS) as ColourName[];
export const BACKGROUND = [200, 200, 200] as const;
/** Object centre -> thirds of the canvas width and height, row-major. */
export const POSITIONS = [
  "top left",
  "top",
  "top right",
  "left",
  "centre",
  "right",
  "bottom left",
  "bottom",
  "bottom right",
] as const;
export type PositionName = (typeof POSITIONS)[number];

const MIN_SIDE = 160;
const MAX_SIDE = 320;
/** Free pixels between two objects' boxes. */
const GAP = 4;
const PLACEMENT_ATTEMPTS = 200;

/** Unit star (outer radius 1, inner 0.5), from the top clockwise; literals so both languages agree. */
const STAR_UNIT: ReadonlyArray<readonly [number, number]> = [
  [0.0, -1.0],
  [0.29389262614623657, -0.4045084971874737],
  [0.9510565162951535, -0.30901699437494745],
  [0.47552825814757677, 0.15450849718747373],
  [0.5877852522924732, 0.8090169943749475],
  [0.0, 0.5],
  [-0.5877852522924732, 0.8090169943749475],
  [-0.47552825814757677, 0.15450849718747373],
  [-0.9510565162951535, -0.30901699437494745],
  [-0.29389262614623657, -0.4045084971874737],
];

export interface SceneObject {
  shape: ShapeName;
  colour: ColourName;
  /** Top-left corner and side of the object's square box, in pixels. */
  x0: number;
  y0: number;
  size: number;
}

export interface Scene {
  seed: number;
  index: number;
  width: number;
  height: number;
  objects: SceneObject[];
}

/** 0, 1 or 2: the third of [0, extent) holding a centre given doubled (so everything stays integer). */
function thirdOf(twiceCentre: number, extent: number): number {
  if (3 * twiceCentre < 2 * extent) return 0;
  if (3 * twiceCentre > 4 * extent) return 2;
  return 1;
}

/** The generator keeps centres at least 4% of the side away from the third lines: no borderline cases. */
function nearThirdLine(twiceCentre: number, extent: number): boolean {
  const d1 = Math.abs(3 * twiceCentre - 2 * extent);
  const d2 = Math.abs(3 * twiceCentre - 4 * extent);
  return 25 * Math.min(d1, d2) < 6 * extent;
}

/** Where the object's box centre lies: thirds of the width (left/-/right) and height (top/-/bottom). */
export function positionOf(obj: SceneObject, width: number, height: number): PositionName {
  const col = thirdOf(2 * obj.x0 + obj.size, width);
  const row = thirdOf(2 * obj.y0 + obj.size, height);
  return POSITIONS[row * 3 + col];
}

export function objectBox(obj: SceneObject): Box {
  return [obj.x0, obj.y0, obj.x0 + obj.size, obj.y0 + obj.size];
}

function boxesApart(a: SceneObject, b: SceneObject): boolean {
  return (
    a.x0 + a.size + GAP <= b.x0 ||
    b.x0 + b.size + GAP <= a.x0 ||
    a.y0 + a.size + GAP <= b.y0 ||
    b.y0 + b.size + GAP <= a.y0
  );
}

/** Scene `index` of `seed`: canvas 160-320 px each side, 2-4 non-overlapping objects (rarely fewer fit). */
export function generateScene(seed: number, index: number): Scene {
  const rng = sceneRng(seed, index);
  const width = rng.randInt(MIN_SIDE, MAX_SIDE);
  const height = rng.randInt(MIN_SIDE, MAX_SIDE);
  const wanted = rng.randInt(2, 4);
  const short = Math.min(width, height);
  const sizeMin = Math.floor((14 * short + 99) / 100);
  const sizeMax = Math.floor((40 * short) / 100);
  const objects: SceneObject[] = [];
  for (let n = 0; n < wanted; n++) {
    let placed: SceneObject | undefined;
    for (let attempt = 0; attempt < PLACEMENT_ATTEMPTS; attempt++) {
      // Every attempt draws the same five numbers, whatever is rejected afterwards.
      const shape = SHAPES[rng.randInt(0, 3)];
      const colour = COLOUR_NAMES[rng.randInt(0, 5)];
      const size = rng.randInt(sizeMin, sizeMax);
      const x0 = rng.randInt(0, width - size);
      const y0 = rng.randInt(0, height - size);
      const cand: SceneObject = { shape, colour, x0, y0, size };
      if (objects.some((o) => o.shape === shape && o.colour === colour)) continue;
      if (nearThirdLine(2 * x0 + size, width) || nearThirdLine(2 * y0 + size, height)) continue;
      if (!objects.every((o) => boxesApart(cand, o))) continue;
      placed = cand;
      break;
    }
    if (!placed) break;
    objects.push(placed);
  }
  return { seed, index, width, height, objects };
}

function objectVertices(obj: SceneObject): Array<[number, number]> {
  const s = obj.size;
  const cx = obj.x0 + s / 2;
  const cy = obj.y0 + s / 2;
  const r = s / 2;
  if (obj.shape === "triangle") {
    return [
      [cx, obj.y0],
      [obj.x0 + s, obj.y0 + s],
      [obj.x0, obj.y0 + s],
    ];
  }
  return STAR_UNIT.map(([ux, uy]) => [cx + r * ux, cy + r * uy]);
}

/** Even-odd crossing test; same operation order as the Python (numpy) version, so same doubles. */
function insidePolygon(px: number, py: number, verts: Array<[number, number]>): boolean {
  let inside = false;
  for (let i = 0, j = verts.length - 1; i < verts.length; j = i++) {
    const [xi, yi] = verts[i];
    const [xj, yj] = verts[j];
    if (yi === yj) continue;
    if (yi > py !== yj > py) {
      const xCross = ((xj - xi) * (py - yi)) / (yj - yi) + xi;
      if (px < xCross) inside = !inside;
    }
  }
  return inside;
}

/** The object's pixels: (x, y) is inside when its centre (x + 0.5, y + 0.5) is inside the shape. */
export function objectMask(scene: Scene, obj: SceneObject): Mask {
  const { width, height } = scene;
  const data = new Uint8Array(width * height);
  const s = obj.size;
  const cx = obj.x0 + s / 2;
  const cy = obj.y0 + s / 2;
  const r = s / 2;
  const verts = obj.shape === "triangle" || obj.shape === "star" ? objectVertices(obj) : [];
  for (let y = obj.y0; y < obj.y0 + s; y++) {
    const py = y + 0.5;
    for (let x = obj.x0; x < obj.x0 + s; x++) {
      const px = x + 0.5;
      let inside: boolean;
      if (obj.shape === "square") inside = true;
      else if (obj.shape === "circle") {
        const dx = px - cx;
        const dy = py - cy;
        inside = dx * dx + dy * dy <= r * r;
      } else inside = insidePolygon(px, py, verts);
      if (inside) data[y * width + x] = 1;
    }
  }
  return { width, height, data };
}

export interface RenderedScene {
  image: RgbImage;
  /** One mask per object, in `scene.objects` order. */
  masks: Mask[];
}

export function renderScene(scene: Scene): RenderedScene {
  const { width, height } = scene;
  const data = new Uint8Array(width * height * 3);
  for (let i = 0; i < width * height; i++) data.set(BACKGROUND, i * 3);
  const masks = scene.objects.map((obj) => {
    const mask = objectMask(scene, obj);
    const rgb = COLOURS[obj.colour];
    for (let i = 0; i < mask.data.length; i++) if (mask.data[i]) data.set(rgb, i * 3);
    return mask;
  });
  return { image: { width, height, data }, masks };
}
