import sharp from "sharp";
import { thresholdBytes } from "../common/imaging/kernels.js";
import { ImagingPool } from "../common/imaging/pool.js";
import type { Mask } from "./types.js";

/** A 0/1 mask -> a single-channel 8-bit PNG of its size: 255 inside, 0 outside. */
export async function encodeMaskPng(
  mask: Mask,
  pool: ImagingPool = ImagingPool.shared(),
): Promise<Uint8Array> {
  const { data: grey } = await thresholdBytes(pool, mask.data, 1, 255);
  const png = await pool.schedule(() =>
    sharp(Buffer.from(grey.buffer, grey.byteOffset, grey.byteLength), {
      raw: { width: mask.width, height: mask.height, channels: 1 },
    })
      // Without this sharp writes three identical channels.
      .toColourspace("b-w")
      .png()
      .toBuffer(),
  );
  return new Uint8Array(png);
}
