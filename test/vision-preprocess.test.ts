import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { maxAbsDiff } from "../src/common/tensor.js";
import {
  decodeImage,
  decodeMaskImage,
  pillowResizeBicubic,
  preprocessForAlphaClipReadme,
  preprocessForLlava,
  preprocessImageForLlava,
  llavaAlphaFromMask,
  type Mask,
  type RgbImage,
} from "../src/vision/index.js";

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const golden = path.resolve(repoRoot, "test/fixtures/golden/alpha-clip-tiny");
const manifest = JSON.parse(readFileSync(path.join(golden, "manifest.json"), "utf8")) as {
  config: { input_resolution: number };
  files: Record<string, { file: string; shape: number[]; dtype: string }>;
  cases: Record<string, { desc: string; image: string; alpha: string }>;
};
const R = manifest.config.input_resolution;

function goldenF32(name: string): Float32Array {
  const buf = readFileSync(path.join(golden, manifest.files[name].file));
  return new Float32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.length));
}
function goldenU8(name: string): Uint8Array {
  return new Uint8Array(readFileSync(path.join(golden, manifest.files[name].file)));
}
async function loadPair(image: string, mask: string): Promise<{ img: RgbImage; mask: Mask }> {
  const img = await decodeImage(readFileSync(path.join(golden, image)));
  return { img, mask: await decodeMaskImage(readFileSync(path.join(golden, mask)), img.width, img.height) };
}
function countDifferent(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let n = 0;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) n++;
  return n;
}

describe("golden cases are what this test thinks they are", () => {
  it("llava/readme cases: mask = test_mask, ones = no mask, zeros = empty mask", () => {
    expect(manifest.cases.llava_mask.desc).toMatch(/thresholded mask/);
    expect(manifest.cases.llava_ones.desc).toMatch(/no mask/);
    expect(manifest.cases.llava_zeros.desc).toMatch(/empty mask/);
    expect(manifest.files.llava_pixel_values.shape).toEqual([3, R, R]);
  });
});

describe("LLaVA-1.5 preprocessing (pad to square, Pillow bicubic, CLIP normalisation)", async () => {
  const { img, mask } = await loadPair("test_image.png", "test_mask.png");
  const emptyMask: Mask = {
    width: img.width,
    height: img.height,
    data: new Uint8Array(img.width * img.height),
  };

  it("decodes the golden inputs with their documented sizes", () => {
    expect([img.width, img.height]).toEqual([97, 61]);
    expect(mask.data.some((v) => v === 1) && mask.data.some((v) => v === 0)).toBe(true);
  });

  it("pixel values equal the reference bit for bit", () => {
    const out = preprocessForLlava(img, mask, R);
    expect(out.pixelValues.shape).toEqual([1, 3, R, R]);
    const ref = goldenF32("llava_pixel_values");
    expect(maxAbsDiff(out.pixelValues.data, ref)).toBeLessThanOrEqual(1e-6);
    expect(countDifferent(out.pixelValues.data, ref)).toBe(0);
  });

  it.each([
    ["llava_mask_alpha", "mask"],
    ["llava_ones_alpha", "none"],
    ["llava_zeros_alpha", "empty"],
  ] as const)("%s", (name, which) => {
    const m = which === "mask" ? mask : which === "empty" ? emptyMask : null;
    const out = preprocessForLlava(img, m, R);
    expect(out.alpha.shape).toEqual([1, 1, R, R]);
    const ref = goldenF32(name);
    expect(maxAbsDiff(out.alpha.data, ref)).toBeLessThanOrEqual(1e-6);
    expect(countDifferent(out.alpha.data, ref)).toBe(0);
  });

  it("the 336 intermediates (padded + resized image and mask, foreground map) are exact", async () => {
    const big = await loadPair("big_image.png", "big_mask.png");
    const out = preprocessForLlava(big.img, big.mask, 336);
    expect(countDifferent(out.intermediates.resized, goldenU8("big_llava_resized_u8"))).toBe(0);
    expect(countDifferent(out.intermediates.maskResized!, goldenU8("big_llava_mask_resized_u8"))).toBe(0);
    const fg = goldenU8("big_llava_alpha_fg_u8");
    expect(countDifferent(out.intermediates.foreground, fg)).toBe(0);
    // and the alpha tensor follows the foreground map
    for (let i = 0; i < fg.length; i += 97)
      expect(out.alpha.data[i]).toBe(fg[i] ? Math.fround(1.9231) : Math.fround(-1.9231));
  });

  it("pads a tall image left/right (offset (H-W)//2) as well as a wide one top/bottom", () => {
    // A 3x5 white image: canvas 5x5 with one pad column on each side.
    const tall: RgbImage = { width: 3, height: 5, data: new Uint8Array(45).fill(255) };
    const out = preprocessForLlava(tall, null, 5);
    const r = out.intermediates.resized;
    expect(Array.from(r.subarray(0, 3))).toEqual([122, 116, 104]);
    expect(Array.from(r.subarray(3, 6))).toEqual([255, 255, 255]);
    expect(Array.from(r.subarray(12, 15))).toEqual([122, 116, 104]);
  });

  it("rejects a mask whose size differs from the image", () => {
    const wrong: Mask = { width: 10, height: 10, data: new Uint8Array(100) };
    expect(() => preprocessForLlava(img, wrong, R)).toThrow(
      expect.objectContaining({ code: "mask_size_mismatch" }),
    );
  });
});

describe("Alpha-CLIP README preprocessing (short-side bicubic + centre crop; bilinear mask)", async () => {
  const { img, mask } = await loadPair("test_image.png", "test_mask.png");
  const emptyMask: Mask = {
    width: img.width,
    height: img.height,
    data: new Uint8Array(img.width * img.height),
  };

  it("pixel values equal the reference bit for bit", () => {
    const out = preprocessForAlphaClipReadme(img, mask, R);
    const ref = goldenF32("readme_pixel_values");
    expect(countDifferent(out.pixelValues.data, ref)).toBe(0);
  });

  it.each([
    ["readme_mask_alpha", "mask"],
    ["readme_ones_alpha", "none"],
    ["readme_zeros_alpha", "empty"],
  ] as const)("%s with the reference (squashing) mask geometry, within 1e-6", (name, which) => {
    const m = which === "mask" ? mask : which === "empty" ? emptyMask : null;
    const out = preprocessForAlphaClipReadme(img, m, R, { maskGeometry: "reference" });
    expect(maxAbsDiff(out.alpha.data, goldenF32(name))).toBeLessThanOrEqual(1e-6);
  });

  it("336: resized+cropped image exact, alpha within 1e-6", async () => {
    const big = await loadPair("big_image.png", "big_mask.png");
    const out = preprocessForAlphaClipReadme(big.img, big.mask, 336, { maskGeometry: "reference" });
    expect(countDifferent(out.intermediates.resized, goldenU8("big_readme_resized_u8"))).toBe(0);
    expect(maxAbsDiff(out.alpha.data, goldenF32("big_readme_alpha"))).toBeLessThanOrEqual(1e-6);
  });

  it("the default aligned geometry crops the mask like the image; the reference one does not", () => {
    // 40x20 image whose left quarter (x 0..9) is the region. The centre crop keeps x 10..29 of the
    // image, so none of the region is visible; the reference squashes the whole mask into the crop
    // and claims its left quarter is region.
    const w = 40;
    const h = 20;
    const image: RgbImage = { width: w, height: h, data: new Uint8Array(w * h * 3).fill(128) };
    const m: Mask = { width: w, height: h, data: new Uint8Array(w * h) };
    for (let y = 0; y < h; y++) for (let x = 0; x < 10; x++) m.data[y * w + x] = 1; // left quarter
    const aligned = preprocessForAlphaClipReadme(image, m, 20);
    const reference = preprocessForAlphaClipReadme(image, m, 20, { maskGeometry: "reference" });
    const row = 10 * 20;
    // Aligned: the left quarter lies entirely outside the centre crop -> all background.
    expect(Math.max(...aligned.alpha.data)).toBeLessThan(-1.9);
    // Reference: the squashed mask claims the left quarter of the crop is region.
    expect(reference.alpha.data[row + 0]).toBeGreaterThan(1.9);
  });

  it("aligned and reference geometry agree on square images", async () => {
    const big = await loadPair("big_image.png", "big_mask.png");
    const s = Math.min(big.img.width, big.img.height);
    const crop = (src: Uint8Array, ch: number) => {
      const out = new Uint8Array(s * s * ch);
      for (let y = 0; y < s; y++)
        out.set(src.subarray(y * big.img.width * ch, (y * big.img.width + s) * ch), y * s * ch);
      return out;
    };
    const sq: RgbImage = { width: s, height: s, data: crop(big.img.data, 3) };
    const sm: Mask = { width: s, height: s, data: crop(big.mask.data, 1) };
    const a = preprocessForAlphaClipReadme(sq, sm, 224);
    const b = preprocessForAlphaClipReadme(sq, sm, 224, { maskGeometry: "reference" });
    expect(countDifferent(a.alpha.data, b.alpha.data)).toBe(0);
  });
});

describe("pillowResizeBicubic", () => {
  it("returns an equal copy when the size does not change", () => {
    const src = Uint8Array.from({ length: 4 * 3 * 3 }, (_, i) => (i * 37) % 256);
    const out = pillowResizeBicubic(src, 4, 3, 3, 4, 3);
    expect(Array.from(out)).toEqual(Array.from(src));
    expect(out).not.toBe(src);
  });

  it("keeps a flat image flat in both directions and shapes the output", () => {
    const src = new Uint8Array(7 * 5).fill(200);
    for (const [w, h] of [
      [3, 2],
      [19, 11],
      [7, 13],
      [2, 5],
    ]) {
      const out = pillowResizeBicubic(src, 7, 5, 1, w, h);
      expect(out.length).toBe(w * h);
      expect(out.every((v) => v === 200)).toBe(true);
    }
  });

  it("overshoots and clamps at a hard edge when upscaling (cubic a = -0.5)", () => {
    const src = Uint8Array.from([0, 0, 255, 255]);
    const out = pillowResizeBicubic(src, 4, 1, 1, 16, 1);
    expect(out[0]).toBe(0);
    expect(out[15]).toBe(255);
    // monotone ramp in the middle, clamped at both ends
    for (let i = 1; i < 16; i++) expect(out[i]).toBeGreaterThanOrEqual(out[i - 1]);
  });

  it("rejects a buffer of the wrong size", () => {
    expect(() => pillowResizeBicubic(new Uint8Array(5), 2, 2, 1, 4, 4)).toThrow(/expected 4 bytes/);
  });
});

describe("per-image and per-region halves of the LLaVA preprocessing", () => {
  it("compose to exactly preprocessForLlava", async () => {
    const { img, mask } = await loadPair("test_image.png", "test_mask.png");
    const whole = preprocessForLlava(img, mask, R);
    const image = preprocessImageForLlava(img, R);
    const region = llavaAlphaFromMask(mask, R);
    expect(countDifferent(image.pixelValues.data, whole.pixelValues.data)).toBe(0);
    expect(countDifferent(region.alpha.data, whole.alpha.data)).toBe(0);
    expect(countDifferent(llavaAlphaFromMask(null, R).alpha.data, goldenF32("llava_ones_alpha"))).toBe(0);
  });
});
