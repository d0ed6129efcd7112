import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import sharp, { type Sharp } from "sharp";
import { describe, expect, it } from "vitest";
import {
  alphaToMask,
  decodeImage,
  decodeMaskImage,
  decodeRle,
  decodeRleString,
  encodeRle,
  encodeRleString,
  maskToRleCounts,
  regionToMask,
  type Mask,
} from "../src/vision/index.js";

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const golden = path.resolve(repoRoot, "test/fixtures/golden/alpha-clip-tiny");
const testPng = new Uint8Array(readFileSync(path.join(golden, "test_image.png")));
const testMaskPng = new Uint8Array(readFileSync(path.join(golden, "test_mask.png")));

const code = (c: string) => expect.objectContaining({ name: "RegionVqaError", code: c });

/** A 4x3 RGB test pattern with distinct pixel values. */
const W = 4;
const H = 3;
const pattern = Uint8Array.from({ length: W * H * 3 }, (_, i) => (i * 20 + 5) % 256);
const rawInput = { raw: { width: W, height: H, channels: 3 as const } };

function maskOf(width: number, height: number, inside: (x: number, y: number) => boolean): Mask {
  const data = new Uint8Array(width * height);
  for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) data[y * width + x] = inside(x, y) ? 1 : 0;
  return { width, height, data };
}
function onesAt(mask: Mask): string[] {
  const out: string[] = [];
  for (let y = 0; y < mask.height; y++)
    for (let x = 0; x < mask.width; x++) if (mask.data[y * mask.width + x]) out.push(`${x},${y}`);
  return out;
}

describe("decodeImage", () => {
  it("decodes the golden PNG to RGB", async () => {
    const img = await decodeImage(testPng);
    expect([img.width, img.height, img.data.length, img.format]).toEqual([97, 61, 97 * 61 * 3, "png"]);
    expect(img.alpha).toBeUndefined();
  });

  it.each([
    ["png", (s: Sharp) => s.png()],
    ["webp", (s: Sharp) => s.webp({ lossless: true })],
    ["tiff", (s: Sharp) => s.tiff({ compression: "lzw" })],
  ] as const)("lossless %s gives back the exact pixels", async (format, encode) => {
    const bytes = await encode(sharp(Buffer.from(pattern), rawInput)).toBuffer();
    const img = await decodeImage(bytes);
    expect(img.format).toBe(format);
    expect(Array.from(img.data)).toEqual(Array.from(pattern));
  });

  it("decodes JPEG (lossy: close to the source)", async () => {
    const flat = new Uint8Array(16 * 16 * 3).fill(90);
    const bytes = await sharp(Buffer.from(flat), { raw: { width: 16, height: 16, channels: 3 } })
      .jpeg({ quality: 95 })
      .toBuffer();
    const img = await decodeImage(bytes);
    expect(img.format).toBe("jpeg");
    expect(img.data.every((v) => Math.abs(v - 90) <= 2)).toBe(true);
  });

  it("greyscale becomes RGB with the level replicated", async () => {
    const grey = Uint8Array.from([0, 50, 100, 150, 200, 250]);
    const bytes = await sharp(Buffer.from(grey), { raw: { width: 3, height: 2, channels: 1 } })
      .png()
      .toBuffer();
    const img = await decodeImage(bytes);
    expect(Array.from(img.data.subarray(3, 6))).toEqual([50, 50, 50]);
    expect(Array.from(img.data.subarray(15, 18))).toEqual([250, 250, 250]);
  });

  it("palette PNG and GIF (first frame) become RGB", async () => {
    const twoColours = new Uint8Array(8 * 8 * 3);
    for (let i = 0; i < 64; i++) twoColours.set(i < 32 ? [255, 0, 0] : [0, 0, 255], i * 3);
    const input = () => sharp(Buffer.from(twoColours), { raw: { width: 8, height: 8, channels: 3 } });
    for (const bytes of [await input().png({ palette: true }).toBuffer(), await input().gif().toBuffer()]) {
      const img = await decodeImage(bytes);
      expect([img.width, img.height]).toEqual([8, 8]);
      expect(Array.from(img.data.subarray(0, 3))).toEqual([255, 0, 0]);
      expect(Array.from(img.data.subarray(63 * 3))).toEqual([0, 0, 255]);
    }
  });

  it("an animated GIF gives its first frame", async () => {
    const frame = (r: number) =>
      sharp({ create: { width: 6, height: 4, channels: 3, background: { r, g: 0, b: 0 } } })
        .png()
        .toBuffer();
    const gif = await sharp([await frame(255), await frame(0)], { join: { animated: true } })
      .gif()
      .toBuffer();
    expect((await sharp(gif).metadata()).pages).toBe(2);
    const img = await decodeImage(gif);
    expect([img.width, img.height]).toEqual([6, 4]);
    expect(Array.from(img.data.subarray(0, 3))).toEqual([255, 0, 0]);
  });

  it("CMYK JPEG and 16-bit PNG become 8-bit RGB", async () => {
    const px = new Uint8Array(8 * 8 * 3).fill(200);
    for (let i = 0; i < 64; i++) px[i * 3] = 30; // a cyan-ish flat colour
    const input = () => sharp(Buffer.from(px), { raw: { width: 8, height: 8, channels: 3 } });
    const cmyk = await input().toColourspace("cmyk").jpeg({ quality: 100 }).toBuffer();
    expect((await sharp(cmyk).metadata()).space).toBe("cmyk");
    const fromCmyk = await decodeImage(cmyk);
    expect([fromCmyk.data.length, fromCmyk.alpha]).toEqual([8 * 8 * 3, undefined]);
    // colour management may shift the levels, but it stays cyan-ish: red well below green and blue
    expect(fromCmyk.data[0] + 50).toBeLessThan(fromCmyk.data[1]);
    expect(fromCmyk.data[0] + 50).toBeLessThan(fromCmyk.data[2]);
    const png16 = await input().toColourspace("rgb16").png().toBuffer();
    expect((await sharp(png16).metadata()).depth).toBe("ushort");
    expect(Array.from((await decodeImage(png16)).data)).toEqual(Array.from(px));
  });

  it("returns the alpha channel of RGBA images separately", async () => {
    const rgba = Uint8Array.from([10, 20, 30, 0, 40, 50, 60, 127, 70, 80, 90, 128, 1, 2, 3, 255]);
    const bytes = await sharp(Buffer.from(rgba), { raw: { width: 2, height: 2, channels: 4 } })
      .png()
      .toBuffer();
    const img = await decodeImage(bytes);
    expect(Array.from(img.data)).toEqual([10, 20, 30, 40, 50, 60, 70, 80, 90, 1, 2, 3]);
    expect(Array.from(img.alpha!)).toEqual([0, 127, 128, 255]);
    expect(Array.from(alphaToMask(img.alpha!, 2, 2).data)).toEqual([0, 0, 1, 1]);
  });

  it("applies the EXIF orientation", async () => {
    // 4 wide x 2 high, left half black and right half white, tagged "rotate 90 CW" (orientation 6).
    const px = new Uint8Array(4 * 2 * 3);
    for (let y = 0; y < 2; y++)
      for (let x = 2; x < 4; x++) px.fill(255, (y * 4 + x) * 3, (y * 4 + x) * 3 + 3);
    const bytes = await sharp(Buffer.from(px), { raw: { width: 4, height: 2, channels: 3 } })
      .resize(40, 20, { kernel: "nearest" })
      .jpeg({ quality: 100 })
      .withMetadata({ orientation: 6 })
      .toBuffer();
    const img = await decodeImage(bytes);
    expect([img.width, img.height]).toEqual([20, 40]);
    // after a 90 degree clockwise turn the left (black) half is on top
    expect(img.data[(2 * 20 + 10) * 3]).toBeLessThan(30);
    expect(img.data[(37 * 20 + 10) * 3]).toBeGreaterThan(225);
  });

  it("refuses truncated images, non-image bytes, empty input and SVG", async () => {
    await expect(decodeImage(testPng.subarray(0, testPng.length - 200))).rejects.toEqual(
      code("image_undecodable"),
    );
    await expect(decodeImage(testPng.subarray(0, 40))).rejects.toEqual(code("image_undecodable"));
    await expect(decodeImage(new TextEncoder().encode("definitely not an image"))).rejects.toEqual(
      code("image_undecodable"),
    );
    await expect(decodeImage(new Uint8Array(0))).rejects.toEqual(code("image_undecodable"));
    const svg = new TextEncoder().encode('<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>');
    await expect(decodeImage(svg)).rejects.toEqual(code("image_undecodable"));
  });

  it("enforces the byte and pixel limits (before decoding a decompression bomb)", async () => {
    await expect(decodeImage(testPng, { maxBytes: 1000 })).rejects.toEqual(code("image_too_large"));
    await expect(decodeImage(testPng, { maxPixels: 97 * 61 - 1 })).rejects.toEqual(
      code("image_too_many_pixels"),
    );
    await expect(decodeImage(testPng, { maxPixels: 97 * 61 })).resolves.toBeTruthy();
    // 10000 x 10000 black PNG: ~100 KB on disk, 300 MB decoded; the default 40 MP limit stops it.
    const bomb = await sharp({ create: { width: 10000, height: 10000, channels: 3, background: "#000" } })
      .png()
      .toBuffer();
    expect(bomb.length).toBeLessThan(2_000_000);
    const rssBefore = process.memoryUsage().rss;
    await expect(decodeImage(bomb)).rejects.toEqual(code("image_too_many_pixels"));
    expect(process.memoryUsage().rss - rssBefore).toBeLessThan(200 * 1024 * 1024);
  });
});

describe("decodeMaskImage", () => {
  it("reads the golden mask: non-zero = region", async () => {
    const mask = await decodeMaskImage(testMaskPng, 97, 61);
    const ones = mask.data.reduce((a, b) => a + b, 0);
    expect(ones).toBeGreaterThan(0);
    expect(ones).toBeLessThan(97 * 61);
    expect(mask.data.every((v) => v === 0 || v === 1)).toBe(true);
  });

  it("counts any non-zero channel of a colour mask", async () => {
    const px = Uint8Array.from([0, 0, 0, 1, 0, 0, 0, 0, 7, 255, 255, 255]);
    const bytes = await sharp(Buffer.from(px), { raw: { width: 2, height: 2, channels: 3 } })
      .png()
      .toBuffer();
    expect(Array.from((await decodeMaskImage(bytes, 2, 2)).data)).toEqual([0, 1, 1, 1]);
  });

  it("never resizes: a wrong size is mask_size_mismatch", async () => {
    await expect(decodeMaskImage(testMaskPng, 96, 61)).rejects.toEqual(code("mask_size_mismatch"));
    await expect(decodeMaskImage(testMaskPng.subarray(0, 30), 97, 61)).rejects.toEqual(
      code("mask_undecodable"),
    );
  });
});

describe("regionToMask", () => {
  it("whole = every pixel", () => {
    expect(regionToMask({ kind: "whole" }, 5, 4).data.every((v) => v === 1)).toBe(true);
  });

  it("mask: normalises any non-zero value to 1; checks the size; refuses an empty mask", () => {
    const m = regionToMask(
      { kind: "mask", mask: { width: 2, height: 1, data: Uint8Array.from([0, 255]) } },
      2,
      1,
    );
    expect(Array.from(m.data)).toEqual([0, 1]);
    expect(() =>
      regionToMask({ kind: "mask", mask: { width: 3, height: 1, data: new Uint8Array(3).fill(1) } }, 2, 1),
    ).toThrow(code("mask_size_mismatch"));
    expect(() =>
      regionToMask({ kind: "mask", mask: { width: 2, height: 1, data: new Uint8Array(2) } }, 2, 1),
    ).toThrow(code("region_empty"));
  });

  it("box: pixels whose centre lies inside", () => {
    expect(onesAt(regionToMask({ kind: "box", box: [1, 0, 3, 2] }, 4, 3))).toEqual([
      "1,0",
      "2,0",
      "1,1",
      "2,1",
    ]);
    // fractional edges: centres 0.5 and 1.5 are inside [0.4, 1.6), 2.5 is not
    expect(onesAt(regionToMask({ kind: "box", box: [0.4, 0.4, 1.6, 1.4] }, 4, 3))).toEqual(["0,0", "1,0"]);
    expect(regionToMask({ kind: "box", box: [0, 0, 4, 3] }, 4, 3).data.every((v) => v === 1)).toBe(true);
  });

  it("box errors: outside the image, inverted, non-finite, too small for any pixel centre", () => {
    expect(() => regionToMask({ kind: "box", box: [0, 0, 5, 3] }, 4, 3)).toThrow(code("box_invalid"));
    expect(() => regionToMask({ kind: "box", box: [-1, 0, 2, 2] }, 4, 3)).toThrow(/outside the 4x3 image/);
    expect(() => regionToMask({ kind: "box", box: [3, 0, 1, 2] }, 4, 3)).toThrow(code("box_invalid"));
    expect(() => regionToMask({ kind: "box", box: [0, 0, NaN, 2] }, 4, 3)).toThrow(code("box_invalid"));
    expect(() =>
      regionToMask({ kind: "box", box: [0, 0, 1] as unknown as [number, number, number, number] }, 4, 3),
    ).toThrow(code("box_invalid"));
    expect(() => regionToMask({ kind: "box", box: [0.6, 0.6, 1.4, 1.4] }, 4, 3)).toThrow(
      code("region_empty"),
    );
  });

  it("polygon: even-odd fill of pixel centres, union of parts, clipped to the image", () => {
    const square = regionToMask({ kind: "polygon", polygons: [[1, 0, 3, 0, 3, 2, 1, 2]] }, 4, 3);
    expect(Array.from(square.data)).toEqual(
      Array.from(regionToMask({ kind: "box", box: [1, 0, 3, 2] }, 4, 3).data),
    );
    // triangle under x + y = 3: centres (0.5,0.5), (1.5,0.5), (0.5,1.5) are inside, (2.5,0.5) is not
    expect(onesAt(regionToMask({ kind: "polygon", polygons: [[0, 0, 3, 0, 0, 3]] }, 4, 3))).toEqual([
      "0,0",
      "1,0",
      "0,1",
    ]);
    // a centre exactly on the right/lower edge is outside (half-open, so shared edges count once)
    expect(onesAt(regionToMask({ kind: "polygon", polygons: [[0, 0, 2, 0, 0, 2]] }, 4, 3))).toEqual(["0,0"]);
    // two parts are united; a part reaching outside is clipped
    const two = regionToMask(
      {
        kind: "polygon",
        polygons: [
          [0, 0, 1, 0, 1, 1, 0, 1],
          [3, 2, 9, 2, 9, 9, 3, 9],
        ],
      },
      4,
      3,
    );
    expect(onesAt(two)).toEqual(["0,0", "3,2"]);
    // a ring drawn as one self-overlapping path: outer 0..8, inner 2..6 traced the same way -> hole by even-odd
    const ring = regionToMask(
      { kind: "polygon", polygons: [[0, 0, 8, 0, 8, 8, 0, 8, 0, 0, 2, 2, 6, 2, 6, 6, 2, 6, 2, 2]] },
      8,
      8,
    );
    expect(ring.data[4 * 8 + 4]).toBe(0);
    expect(ring.data[1 * 8 + 1]).toBe(1);
  });

  it("polygon errors: NaN, too few points, odd length, empty list, outside the image", () => {
    expect(() => regionToMask({ kind: "polygon", polygons: [[0, 0, NaN, 1, 2, 2]] }, 4, 3)).toThrow(
      code("polygon_invalid"),
    );
    expect(() => regionToMask({ kind: "polygon", polygons: [[0, 0, 2, 2]] }, 4, 3)).toThrow(
      code("polygon_invalid"),
    );
    expect(() => regionToMask({ kind: "polygon", polygons: [[0, 0, 2, 2, 3]] }, 4, 3)).toThrow(
      code("polygon_invalid"),
    );
    expect(() => regionToMask({ kind: "polygon", polygons: [] }, 4, 3)).toThrow(code("polygon_invalid"));
    expect(() => regionToMask({ kind: "polygon", polygons: [[10, 10, 20, 10, 20, 20]] }, 4, 3)).toThrow(
      code("region_empty"),
    );
  });

  it("unknown kinds are region_invalid", () => {
    expect(() => regionToMask({ kind: "circle" } as never, 4, 3)).toThrow(code("region_invalid"));
  });
});

describe("COCO RLE", () => {
  it("compressed strings follow pycocotools' format (worked examples)", () => {
    // runs 5, 3 -> one 5-bit group each: '0' + 5, '0' + 3
    expect(encodeRleString([5, 3])).toBe("53");
    // from the 4th run on the difference to the run two places back is stored: 1 - 2 = -1 -> 31 + 48 = 'O'
    expect(encodeRleString([1, 2, 3, 1])).toBe("123O");
    expect(decodeRleString("123O")).toEqual([1, 2, 3, 1]);
    // 100 needs two groups: 100 = 4 + 3 * 32 -> (4 | 0x20) + 48 = 'T', 3 + 48 = '3'
    expect(encodeRleString([100])).toBe("T3");
    expect(decodeRleString("T3")).toEqual([100]);
  });

  it("round-trips masks through compressed and uncompressed RLE (column-major)", async () => {
    const golden = await decodeMaskImage(testMaskPng, 97, 61);
    const rle = encodeRle(golden);
    expect(rle.size).toEqual([61, 97]);
    expect(typeof rle.counts).toBe("string");
    expect(Array.from(regionToMask({ kind: "rle", rle }, 97, 61).data)).toEqual(Array.from(golden.data));
    const counts = maskToRleCounts(golden);
    expect(counts.reduce((a, b) => a + b, 0)).toBe(97 * 61);
    expect(Array.from(decodeRle({ size: [61, 97], counts }, 97, 61).data)).toEqual(Array.from(golden.data));
    // many random masks, including ones that start with foreground (first run 0) and long runs
    let seed = 7;
    const rand = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff;
    for (let t = 0; t < 50; t++) {
      const w = 1 + Math.floor(rand() * 40);
      const h = 1 + Math.floor(rand() * 40);
      const p = rand();
      const m = maskOf(w, h, () => rand() < p);
      expect(Array.from(decodeRle(encodeRle(m), w, h).data)).toEqual(Array.from(m.data));
    }
  });

  it("is column-major: the first run goes down the first column", () => {
    // 3 wide x 2 high; runs: 1 background (0,0), 2 foreground (0,1) and (1,0), rest background
    const m = decodeRle({ size: [2, 3], counts: [1, 2, 3] }, 3, 2);
    expect(onesAt(m)).toEqual(["1,0", "0,1"]);
  });

  it("refuses malformed RLE", () => {
    const bad = (rle: unknown) => () => regionToMask({ kind: "rle", rle } as never, 3, 2);
    expect(bad({ size: [2, 3], counts: [1, 2, 2] })).toThrow(code("rle_invalid")); // sums to 5, not 6
    expect(bad({ size: [2, 3], counts: [1, -2, 7] })).toThrow(code("rle_invalid"));
    expect(bad({ size: [2, 3], counts: [1, 2.5, 2.5] })).toThrow(code("rle_invalid"));
    expect(bad({ size: [3, 2], counts: [1, 2, 3] })).toThrow(/needs \[2, 3\]/); // size must be [h, w] of the image
    expect(bad({ size: [2], counts: [6] })).toThrow(code("rle_invalid"));
    expect(bad({ size: [2, 3], counts: { a: 1 } })).toThrow(code("rle_invalid"));
    expect(bad({ size: [2, 3], counts: "1 2" })).toThrow(/unexpected character/);
    expect(bad({ size: [2, 3], counts: "1T" })).toThrow(/ends in the middle/);
    expect(bad({ size: [2, 3], counts: "14" })).toThrow(/cover 5 pixels but the image has 6/);
    expect(bad({ size: [2, 3], counts: "124" })).toThrow(code("rle_invalid"));
    expect(bad({ size: [2, 3], counts: "\u0000" })).toThrow(code("rle_invalid"));
    // well-formed but without foreground: 6 background pixels
    expect(bad({ size: [2, 3], counts: "6" })).toThrow(code("region_empty"));
    expect(onesAt(regionToMask({ kind: "rle", rle: { size: [2, 3], counts: "33" } }, 3, 2))).toEqual([
      "2,0",
      "1,1",
      "2,1",
    ]);
  });
});
