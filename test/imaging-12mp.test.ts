/**
 * Phone-sized images (4032 x 3024, portrait, odd sizes, a mask crossing the image's edge) through the
 * native kernels and the TypeScript specifications, against Pillow's and PyTorch's results
 * (test/fixtures/golden/pillow-12mp, made by tools/imaging/make_golden.py from the same formulas as
 * test/support/seeded-image.ts). Every result is compared as a SHA-256 of its bytes: byte-equal or
 * failed.
 */
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { resample } from "../src/common/imaging/kernels.js";
import { ImagingPool } from "../src/common/imaging/pool.js";
import { SamProcessor } from "../src/segmenter/processor.js";
import type { SegmenterConfig } from "../src/segmenter/types.js";
import { LlavaImageProcessor } from "../src/vision/processor.js";
import { seededImage, seededLogits, seededMask } from "./support/seeded-image.js";

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
interface Case {
  width: number;
  height: number;
  seed: number;
  image_sha256: string;
  mask_sha256: string;
  llava_resized_u8: string;
  llava_pixel_values_f32: string;
  llava_mask_resized_u8: string;
  llava_foreground_u8: string;
  llava_alpha_f32: string;
  llava_foreground_count: number;
  sam1_frame: [number, number];
  sam1_resized_u8: string;
  sam1_pixel_values_f32: string;
  sam2_resized_u8: string;
  sam2_mask_u8: string;
  sam2_mask_area: number;
  sam1_mask_u8: string;
  sam1_mask_area: number;
}
const golden = JSON.parse(
  readFileSync(path.join(repoRoot, "test/fixtures/golden/pillow-12mp/cases.json"), "utf8"),
) as { cases: Record<string, Case> };

const sha = (a: ArrayBufferView) =>
  createHash("sha256")
    .update(new Uint8Array(a.buffer, a.byteOffset, a.byteLength))
    .digest("hex");

const samConfig = (resize: SegmenterConfig["resize"]): SegmenterConfig => ({
  family: resize === "stretch" ? "sam2" : "sam1",
  imageSize: 1024,
  resize,
  mean: [0.485, 0.456, 0.406],
  std: [0.229, 0.224, 0.225],
  maskSize: 256,
  encoder: "encoder.onnx",
  decoder: "decoder.onnx",
});

const native = new ImagingPool({ backend: "native", threads: 2 });
const nativeOneThread = new ImagingPool({ backend: "native", threads: 1 });
const typescript = new ImagingPool({ backend: "typescript" });

/** Everything a case checks, through one pool. */
async function check(pool: ImagingPool, c: Case): Promise<void> {
  const image = seededImage(c.width, c.height, c.seed);
  const mask = seededMask(c.width, c.height);
  const llava = new LlavaImageProcessor(336, pool);
  const { pixelValues, resized } = await llava.image(image);
  expect(sha(resized), "LLaVA resized image").toBe(c.llava_resized_u8);
  expect(sha(pixelValues.data), "LLaVA pixel values").toBe(c.llava_pixel_values_f32);
  const alpha = await llava.alpha(mask);
  expect(sha(alpha.maskResized!), "LLaVA resized mask").toBe(c.llava_mask_resized_u8);
  expect(sha(alpha.foreground), "LLaVA foreground").toBe(c.llava_foreground_u8);
  expect(sha(alpha.alpha), "LLaVA alpha").toBe(c.llava_alpha_f32);

  const sam1 = new SamProcessor(samConfig("longest-side"), pool);
  const pre1 = await sam1.image(image);
  expect([pre1.frame.resizedWidth, pre1.frame.resizedHeight]).toEqual(c.sam1_frame);
  expect(sha(pre1.pixelValues.data), "SAM 1 pixel values").toBe(c.sam1_pixel_values_f32);
  const stretched = await resample(pool, {
    src: image.data,
    kind: "rgb",
    width: c.width,
    height: c.height,
    outWidth: 1024,
    outHeight: 1024,
    filter: "bilinear",
  });
  expect(sha(stretched), "SAM 2.1 resized image").toBe(c.sam2_resized_u8);

  const logits = seededLogits(c.seed);
  const sam2 = new SamProcessor(samConfig("stretch"), pool);
  const m2 = await sam2.mask(logits, (await sam2.image(image)).frame);
  expect(m2.area).toBe(c.sam2_mask_area);
  expect(sha(m2.mask.data), "SAM 2.1 mask").toBe(c.sam2_mask_u8);
  const m1 = await sam1.mask(logits, pre1.frame);
  expect(m1.area).toBe(c.sam1_mask_area);
  expect(sha(m1.mask.data), "SAM 1 mask").toBe(c.sam1_mask_u8);
}

describe("12-megapixel preprocessing and masks are byte-equal to Pillow and PyTorch", () => {
  it("the formulas make the same images and masks as the golden tool's", () => {
    for (const c of Object.values(golden.cases)) {
      expect(sha(seededImage(c.width, c.height, c.seed).data)).toBe(c.image_sha256);
      expect(sha(seededMask(c.width, c.height).data)).toBe(c.mask_sha256);
    }
  });

  it.each(Object.keys(golden.cases))("native kernels, 2 threads: %s", async (name) => {
    expect(native.backend).toBe("native");
    await check(native, golden.cases[name]);
  });

  it("native kernels, 1 thread: the row split changes nothing (odd-portrait)", async () => {
    await check(nativeOneThread, golden.cases["odd-portrait"]);
  });

  // The specifications take about a second per 12 MP resize: two cases cover both paddings.
  it.each(["landscape", "odd-portrait"])("TypeScript specifications: %s", async (name) => {
    await check(typescript, golden.cases[name]);
  });
});
