/**
 * Distinct synthetic test images for the benchmarks: a few coloured shapes on a plain background,
 * drawn as SVG and encoded to PNG by sharp. Each seed gives a different image (so the vision cache
 * never answers for another request) and a box around its first shape (the region asked about).
 */
import sharp from "sharp";
import { seededRandom } from "../src/llm/index.js";
import type { Box } from "../src/vision/index.js";

export interface BenchImage {
  png: Buffer;
  width: number;
  height: number;
  /** Box around the first shape, [x1, y1, x2, y2] in pixels. */
  box: Box;
}

const COLOURS = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#bcbd22"];

export async function benchImage(seed: number, width = 640, height = 480): Promise<BenchImage> {
  const rand = seededRandom(1000 + seed);
  const pick = <T>(items: readonly T[]): T => items[Math.floor(rand() * items.length)];
  const shapes: string[] = [];
  let box: Box = [0, 0, width, height];
  for (let i = 0; i < 4; i++) {
    const size = Math.round((0.15 + 0.2 * rand()) * Math.min(width, height));
    const x = Math.round(rand() * (width - size));
    const y = Math.round(rand() * (height - size));
    const fill = pick(COLOURS);
    if (i === 0) box = [x, y, x + size, y + size];
    shapes.push(
      rand() < 0.5
        ? `<rect x="${x}" y="${y}" width="${size}" height="${size}" fill="${fill}"/>`
        : `<circle cx="${x + size / 2}" cy="${y + size / 2}" r="${size / 2}" fill="${fill}"/>`,
    );
  }
  const background = `rgb(${200 + Math.floor(rand() * 55)},${200 + Math.floor(rand() * 55)},${200 + Math.floor(rand() * 55)})`;
  // The first shape is drawn last so that nothing covers the region asked about.
  const svg =
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}">` +
    `<rect width="100%" height="100%" fill="${background}"/>${shapes.reverse().join("")}</svg>`;
  const png = await sharp(Buffer.from(svg)).png().toBuffer();
  return { png, width, height, box };
}

/** `count` distinct images, seeds `first`.. */
export async function benchImages(count: number, first = 0): Promise<BenchImage[]> {
  const out: BenchImage[] = [];
  for (let i = 0; i < count; i++) out.push(await benchImage(first + i));
  return out;
}
