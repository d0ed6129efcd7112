/**
 * Large test inputs made from a formula instead of stored files: the same formulas as
 * tools/imaging/make_golden.py (which stores only the SHA-256 of Pillow's and PyTorch's results on
 * them), so 12-megapixel cases cost a few hundred bytes of repository.
 */
import type { Mask, RgbImage } from "../../src/vision/types.js";

/** lowbias32: a 32-bit integer hash (every step modulo 2^32). */
function mix(value: number): number {
  let n = value >>> 0;
  n = (n ^ (n >>> 16)) >>> 0;
  n = Math.imul(n, 0x7feb352d) >>> 0;
  n = (n ^ (n >>> 15)) >>> 0;
  n = Math.imul(n, 0x846ca68b) >>> 0;
  return (n ^ (n >>> 16)) >>> 0;
}

/** Gradients, a checkerboard of hard edges and per-pixel noise (`scene_image` in the tool). */
export function seededImage(width: number, height: number, seed: number): RgbImage {
  const data = new Uint8Array(width * height * 3);
  const seedTerm = Math.imul(seed, 2654435761 | 0) >>> 0;
  for (let y = 0; y < height; y++) {
    const yTerm = Math.imul(y, 19349663);
    const gy = Math.floor((y * 127) / (height - 1));
    const cy = Math.floor(y / 61);
    for (let x = 0; x < width; x++) {
      const xTerm = Math.imul(x, 73856093);
      const gx = Math.floor((x * 255) / (width - 1));
      const checker = ((Math.floor(x / 97) + cy) & 1) * 100;
      const at = (y * width + x) * 3;
      for (let c = 0; c < 3; c++) {
        const noise = mix(xTerm ^ yTerm ^ (c * 83492791) ^ seedTerm) & 63;
        data[at + c] = (gx + gy + c * 40 + noise + checker) & 255;
      }
    }
  }
  return { width, height, data };
}

/** An ellipse crossing the right edge and a rectangle in the top-left corner (`scene_mask`). */
export function seededMask(width: number, height: number): Mask {
  const data = new Uint8Array(width * height);
  const cx = Math.floor((3 * width) / 4);
  const cy = Math.floor(height / 2);
  const rx = Math.floor(width / 3);
  const ry = Math.floor((2 * height) / 5);
  const limit = rx * rx * ry * ry;
  for (let y = 0; y < height; y++) {
    const dy = (y - cy) * (y - cy) * rx * rx;
    for (let x = 0; x < width; x++) {
      const ellipse = (x - cx) * (x - cx) * ry * ry + dy <= limit;
      const corner = x < Math.floor(width / 5) && y < Math.floor(height / 3);
      data[y * width + x] = ellipse || corner ? 1 : 0;
    }
  }
  return { width, height, data };
}

/** 256 x 256 float32 mask logits: noise in [-4, 4) plus a left-to-right ramp (`scene_logits`). */
export function seededLogits(seed: number, size = 256): Float32Array {
  const out = new Float32Array(size * size);
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      const noise = mix(y * 256 + x + seed * 65536) & 0xffff;
      out[y * size + x] = (noise / 65536 - 0.5) * 8 + (x - 127.5) / 40;
    }
  }
  return out;
}
