import { RegionVqaError } from "../common/errors.js";
import { ImagingPool } from "../common/imaging/pool.js";
import type { CocoRle, Mask } from "./types.js";

/**
 * COCO run-length encoding (pycocotools' format): runs alternate background/foreground starting with
 * background, over the pixels in column-major order (index = x * height + y). The compressed string
 * form stores each run in 5-bit groups offset by 48 ('0'), bit 0x20 = more groups follow, bit 0x10 of
 * the last group = sign; from the fourth run on, a run is stored as the difference to the run two
 * places before it.
 */

function rleError(message: string): RegionVqaError {
  return new RegionVqaError("rle_invalid", `Invalid COCO RLE: ${message}`);
}

/** Decode the compressed COCO counts string into run lengths. */
export function decodeRleString(s: string): number[] {
  const counts: number[] = [];
  let p = 0;
  while (p < s.length) {
    let x = 0;
    let k = 0;
    let more = true;
    while (more) {
      if (p >= s.length) throw rleError(`the counts string ends in the middle of a number (at ${p}).`);
      const code = s.charCodeAt(p) - 48;
      if (code < 0 || code > 63) throw rleError(`unexpected character ${JSON.stringify(s[p])} at ${p}.`);
      // 6 groups already hold 30 bits; any longer number is not a run length of a real image.
      if (k >= 7) throw rleError(`a number at ${p} is too long.`);
      x += (code & 0x1f) * 2 ** (5 * k);
      more = (code & 0x20) !== 0;
      p++;
      k++;
      if (!more && code & 0x10) x -= 2 ** (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    if (x < 0) throw rleError(`run ${counts.length} is negative (${x}).`);
    counts.push(x);
  }
  return counts;
}

/** Encode run lengths into the compressed COCO counts string (pycocotools' rleToString). */
export function encodeRleString(counts: readonly number[]): string {
  let out = "";
  for (let i = 0; i < counts.length; i++) {
    let x = counts[i];
    if (i > 2) x -= counts[i - 2];
    let more = true;
    while (more) {
      let c = x & 0x1f;
      x = Math.floor(x / 32);
      more = c & 0x10 ? x !== -1 : x !== 0;
      if (more) c |= 0x20;
      out += String.fromCharCode(c + 48);
    }
  }
  return out;
}

/** Run lengths (column-major, background first) of a mask. */
export function maskToRleCounts(mask: Mask): number[] {
  const { width: w, height: h, data } = mask;
  const counts: number[] = [];
  let current = 0;
  let run = 0;
  for (let x = 0; x < w; x++) {
    for (let y = 0; y < h; y++) {
      const v = data[y * w + x] ? 1 : 0;
      if (v !== current) {
        counts.push(run);
        run = 0;
        current = v;
      }
      run++;
    }
  }
  counts.push(run);
  return counts;
}

/** `encodeRle` with the run lengths counted as a job of `pool` (off the event loop with the addon). */
export async function encodeRleAsync(mask: Mask, pool: ImagingPool = ImagingPool.shared()): Promise<CocoRle> {
  const counts = await pool.run(
    async (addon) =>
      Array.from(await addon.rleCounts({ mask: mask.data, width: mask.width, height: mask.height })),
    () => maskToRleCounts(mask),
  );
  return { size: [mask.height, mask.width], counts: encodeRleString(counts) };
}

/** Encode a mask as a COCO RLE with a compressed counts string. */
export function encodeRle(mask: Mask): CocoRle {
  return { size: [mask.height, mask.width], counts: encodeRleString(maskToRleCounts(mask)) };
}

/**
 * A COCO RLE's run lengths, checked against the image: `size` must be [height, width], and the runs
 * must be non-negative integers covering every pixel. Throws `rle_invalid`.
 */
export function rleRunLengths(rle: CocoRle, width: number, height: number): number[] {
  if (rle === null || typeof rle !== "object") throw rleError("expected an object {size, counts}.");
  const size = rle.size as unknown;
  if (!Array.isArray(size) || size.length !== 2 || !size.every((v) => Number.isInteger(v) && v > 0)) {
    throw rleError("`size` must be [height, width] with positive integers.");
  }
  const [h, w] = size as [number, number];
  if (h !== height || w !== width) {
    throw rleError(
      `size is [${h}, ${w}] (height, width) but the image is ${width}x${height} (needs [${height}, ${width}]).`,
    );
  }
  let counts: number[];
  if (typeof rle.counts === "string") {
    counts = decodeRleString(rle.counts);
  } else if (Array.isArray(rle.counts)) {
    counts = rle.counts;
    for (let i = 0; i < counts.length; i++) {
      const c = counts[i];
      if (!Number.isInteger(c) || c < 0)
        throw rleError(`counts[${i}] = ${JSON.stringify(c)} is not a non-negative integer.`);
    }
  } else {
    throw rleError("`counts` must be a string (compressed) or a list of run lengths.");
  }
  let total = 0;
  for (const c of counts) total += c;
  if (total !== h * w) {
    throw rleError(`the runs cover ${total} pixels but the image has ${h * w} (${w}x${h}).`);
  }
  return counts;
}

/** Decode a COCO RLE (compressed or uncompressed) into a mask; `width`/`height` are the image's size. */
export function decodeRle(rle: CocoRle, width: number, height: number): Mask {
  const counts = rleRunLengths(rle, width, height);
  const w = width;
  const h = height;
  const data = new Uint8Array(w * h);
  let index = 0;
  for (let i = 0; i < counts.length; i++) {
    const run = counts[i];
    if (i % 2 === 1) {
      for (let j = index; j < index + run; j++) {
        const x = Math.floor(j / h);
        const y = j - x * h;
        data[y * w + x] = 1;
      }
    }
    index += run;
  }
  return { width: w, height: h, data };
}
