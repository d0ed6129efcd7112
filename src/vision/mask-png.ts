import sharp from "sharp";
import type { Mask } from "./types.js";

/** A 0/1 mask -> a single-channel 8-bit PNG of its size: 255 inside, 0 outside. */
export async function encodeMaskPng(mask: Mask): Promise<Uint8Array> {
  const grey = new Uint8Array(mask.data.length);
  for (let i = 0; i < grey.length; i++) grey[i] = mask.data[i] ? 255 : 0;
  const png = await sharp(Buffer.from(grey.buffer, grey.byteOffset, grey.byteLength), {
    raw: { width: mask.width, height: mask.height, channels: 1 },
  })
    // Without this sharp writes three identical channels.
    .toColourspace("b-w")
    .png()
    .toBuffer();
  return new Uint8Array(png);
}
