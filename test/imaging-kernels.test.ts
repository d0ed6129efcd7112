/**
 * The native image kernels (native/imaging.cc) against their TypeScript specifications on seeded
 * random inputs: every size class (up, down, unchanged, one pixel), every pixel kind, padded canvases,
 * both filters, every region form, and bad arguments. Equal means byte-equal (floats bit for bit).
 */
import { createHash } from "node:crypto";
import { describe, expect, it } from "vitest";
import {
  bilinearMask,
  bilinearResize,
  canvasPixels,
  pixelsToMask,
  resample,
  sha256Hex,
  splitPixels,
  thresholdBytes,
  toPlanes,
  type Canvas,
  type PixelKind,
} from "../src/common/imaging/kernels.js";
import { loadNativeImaging } from "../src/common/imaging/native.js";
import { pillowResize, type PillowFilter } from "../src/common/imaging/pillow-resize.js";
import { ImagingPool } from "../src/common/imaging/pool.js";
import { resizeBilinear } from "../src/common/imaging/torch-bilinear.js";
import { seededRandom } from "../src/llm/index.js";
import {
  alphaToMask,
  alphaToMaskAsync,
  decodeImage,
  encodeRle,
  encodeRleAsync,
  regionToMask,
  regionToMaskAsync,
  type Region,
} from "../src/vision/index.js";
import { seededImage } from "./support/seeded-image.js";
import { makeImage } from "./support/server.js";

const native = new ImagingPool({ backend: "native", threads: 3 });
const typescript = new ImagingPool({ backend: "typescript" });

function bytes(n: number, seed: number, max = 256): Uint8Array {
  const rand = seededRandom(seed);
  return Uint8Array.from({ length: n }, () => Math.floor(rand() * max));
}
const same = (a: ArrayBufferView, b: ArrayBufferView) =>
  Buffer.compare(
    Buffer.from(a.buffer, a.byteOffset, a.byteLength),
    Buffer.from(b.buffer, b.byteOffset, b.byteLength),
  ) === 0;

describe("native resample = Pillow's resize (the TypeScript specification)", () => {
  const cases: Array<[number, number, number, number, PixelKind, PillowFilter, boolean]> = [
    [97, 61, 336, 336, "rgb", "bicubic", true], // up, padded top/bottom
    [61, 97, 336, 336, "mask", "bicubic", true], // up, padded left/right
    [1500, 900, 224, 224, "rgb", "bicubic", true], // down by ~7, padded
    [900, 1500, 224, 224, "mask", "bicubic", true],
    [640, 480, 1024, 768, "rgb", "bilinear", false], // SAM 1 upscale
    [2000, 1100, 1024, 563, "rgb", "bilinear", false], // SAM 1 downscale
    [300, 200, 300, 77, "rgb", "bicubic", false], // vertical pass only
    [300, 200, 91, 200, "grey", "bicubic", false], // horizontal pass only
    [17, 5, 3, 9, "grey", "bilinear", false],
    [1, 1, 5, 3, "rgb", "bicubic", false], // one pixel
    [5, 1, 5, 1, "rgb", "bicubic", true], // no resize, only the canvas
    [64, 64, 64, 64, "mask", "bicubic", false], // nothing to do
  ];
  it.each(cases)("%ix%i -> %ix%i %s %s padded=%s", async (w, h, ow, oh, kind, filter, padded) => {
    let src = bytes(w * h * (kind === "rgb" ? 3 : 1), w * 7 + h);
    if (kind === "mask") src = src.map((v) => (v > 140 ? (v % 3) + 1 : 0)); // any nonzero value is inside
    const s = Math.max(w, h);
    const canvas: Canvas | undefined = padded
      ? { width: s, height: s, left: (s - w) >> 1, top: (s - h) >> 1, color: [122, 116, 104] }
      : undefined;
    const spec = { src, kind, width: w, height: h, canvas, outWidth: ow, outHeight: oh, filter };
    const got = await resample(native, spec);
    const c = canvasPixels(spec);
    const want = pillowResize(c.data, c.width, c.height, c.channels, ow, oh, filter);
    expect(got.length).toBe(want.length);
    expect(same(got, want)).toBe(true);
    expect(same(await resample(typescript, spec), want)).toBe(true);
  });

  it("pads where LLaVA's expand2square does: a 3x5 white image gets one pad column each side", async () => {
    const out = await resample(native, {
      src: new Uint8Array(45).fill(255),
      kind: "rgb",
      width: 3,
      height: 5,
      canvas: { width: 5, height: 5, left: 1, top: 0, color: [122, 116, 104] },
      outWidth: 5,
      outHeight: 5,
      filter: "bicubic",
    });
    expect(Array.from(out.subarray(0, 6))).toEqual([122, 116, 104, 255, 255, 255]);
  });
});

describe("the other kernels equal their specifications", () => {
  it("toPlanes: HWC bytes through a lookup table into a zero frame", async () => {
    const src = bytes(37 * 23 * 3, 1);
    const lut = Float32Array.from({ length: 768 }, (_, i) => Math.fround(Math.sin(i) * 3));
    const a = await toPlanes(native, src, 37, 23, lut, 40);
    const b = await toPlanes(typescript, src, 37, 23, lut, 40);
    expect(same(a, b)).toBe(true);
    expect(a[3 * 40 * 40 - 1]).toBe(0);
  });

  it("bilinear resize (values bit for bit) and the thresholded mask, on a window", async () => {
    const rand = seededRandom(5);
    const src = Float32Array.from({ length: 300 * 200 }, () => rand() * 8 - 4);
    const input = { src, stride: 300, rows: 200, window: { left: 0, top: 0, width: 261, height: 147 } };
    for (const [w, h] of [
      [1503, 997],
      [64, 31],
      [261, 147],
    ]) {
      const want = resizeBilinear(src, 300, input.window, w, h);
      expect(same(await bilinearResize(native, input, w, h), want), `${w}x${h}`).toBe(true);
      const m = await bilinearMask(native, input, w, h);
      let area = 0;
      for (let i = 0; i < want.length; i++) {
        if ((want[i] > 0 ? 1 : 0) !== m.data[i]) throw new Error(`mask differs at ${i}`);
        area += want[i] > 0 ? 1 : 0;
      }
      expect(m.area).toBe(area);
    }
  });

  it("thresholdBytes, splitPixels (1-4 channels) and pixelsToMask", async () => {
    const src = bytes(5001, 9);
    for (const [threshold, one] of [
      [1, 1],
      [128, 255],
    ]) {
      const a = await thresholdBytes(native, src, threshold, one);
      const b = await thresholdBytes(typescript, src, threshold, one);
      expect(same(a.data, b.data)).toBe(true);
      expect(a.area).toBe(b.area);
    }
    for (const channels of [1, 2, 3, 4]) {
      const pixels = bytes(777 * channels, channels).map((v) => (v < 60 ? 0 : v));
      const a = await splitPixels(native, pixels, channels);
      const b = await splitPixels(typescript, pixels, channels);
      expect(same(a.rgb, b.rgb)).toBe(true);
      expect(a.alpha === undefined).toBe(channels % 2 === 1);
      if (a.alpha) expect(same(a.alpha, b.alpha!)).toBe(true);
      const m = await pixelsToMask(native, pixels, channels);
      const n = await pixelsToMask(typescript, pixels, channels);
      expect(same(m.data, n.data)).toBe(true);
      expect(m.area).toBe(n.area);
    }
  });

  it("sha256Hex of several parts equals node:crypto's hash of their concatenation", async () => {
    const parts = [bytes(10, 1), new Uint8Array(0), bytes(100_003, 2)];
    const want = createHash("sha256").update(Buffer.concat(parts)).digest("hex");
    expect(await sha256Hex(native, ...parts)).toBe(want);
    expect(await sha256Hex(typescript, ...parts)).toBe(want);
    expect(loadNativeImaging().addon?.hasSha256).toBe(true);
  });
});

describe("regions to masks: the native path gives the specification's masks and errors", () => {
  const W = 211;
  const H = 143;
  const rand = seededRandom(42);
  const polygon = (n: number, spread: number) =>
    Array.from({ length: 2 * n }, (_, i) => (i % 2 ? H : W) * (0.5 + (rand() - 0.5) * spread));
  const rleCounts: number[] = [];
  for (let left = W * H; left > 0;) {
    const run = Math.min(left, Math.floor(rand() * 400));
    rleCounts.push(run);
    left -= run;
  }
  const regions: Array<[string, Region]> = [
    ["whole", { kind: "whole" }],
    ["box with fractions", { kind: "box", box: [10.4, 3.5, 150.6, 99.49] }],
    [
      "mask of 0/7/255",
      {
        kind: "mask",
        mask: { width: W, height: H, data: bytes(W * H, 3).map((v) => (v > 200 ? 255 : v > 150 ? 7 : 0)) },
      },
    ],
    ["self-intersecting polygon", { kind: "polygon", polygons: [polygon(9, 1.4)] }],
    ["two polygons, one partly outside", { kind: "polygon", polygons: [polygon(5, 0.5), polygon(7, 2.5)] }],
    ["RLE, list counts", { kind: "rle", rle: { size: [H, W], counts: rleCounts } }],
    [
      "RLE, compressed counts",
      { kind: "rle", rle: encodeRle(regionToMask({ kind: "polygon", polygons: [polygon(6, 1)] }, W, H)) },
    ],
  ];
  it.each(regions)("%s", async (_name, region) => {
    const want = regionToMask(region, W, H);
    const got = await regionToMaskAsync(region, W, H, native);
    expect(same(got.data, want.data)).toBe(true);
    expect(same((await regionToMaskAsync(region, W, H, typescript)).data, want.data)).toBe(true);
    expect((await encodeRleAsync(got, native)).counts).toBe(encodeRle(want).counts);
  });

  it("refuses bad regions with the same codes, before any job runs", async () => {
    const bad: Region[] = [
      { kind: "box", box: [0, 0, W + 1, 10] },
      { kind: "box", box: [5, 5, 5.2, 5.2] }, // valid but covers no pixel centre
      { kind: "polygon", polygons: [[1, 2, 3]] },
      { kind: "rle", rle: { size: [H, W], counts: [1, 2] } },
      { kind: "rle", rle: { size: [W, H], counts: [W * H] } },
      { kind: "mask", mask: { width: W, height: H - 1, data: new Uint8Array(W * (H - 1)) } },
      { kind: "mask", mask: { width: W, height: H, data: new Uint8Array(W * H) } },
      { kind: "points", points: [{ x: 1, y: 1, label: 1 }] },
      { kind: "nonsense" } as unknown as Region,
    ];
    for (const region of bad) {
      let want: unknown;
      try {
        regionToMask(region, W, H);
      } catch (err) {
        want = err;
      }
      expect(want, JSON.stringify(region).slice(0, 60)).toBeDefined();
      await expect(regionToMaskAsync(region, W, H, native)).rejects.toMatchObject({
        code: (want as { code: string }).code,
        message: (want as Error).message,
      });
    }
  });

  it("the alpha channel threshold (>= 128)", async () => {
    const alpha = bytes(W * H, 8);
    expect(same((await alphaToMaskAsync(alpha, W, H, native)).data, alphaToMask(alpha, W, H).data)).toBe(
      true,
    );
    await expect(alphaToMaskAsync(alpha, W + 1, H, native)).rejects.toMatchObject({
      code: "mask_size_mismatch",
    });
  });
});

describe("the pool", () => {
  it("runs a 12 MP resize off the event loop: timers fire while it works", async () => {
    const image = seededImage(4032, 3024, 1);
    for (const [pool, offLoop] of [
      [native, true],
      [typescript, false],
    ] as const) {
      let ticks = 0;
      const timer = setInterval(() => ticks++, 1);
      const job = resample(pool, {
        src: image.data,
        kind: "rgb",
        width: 4032,
        height: 3024,
        outWidth: 336,
        outHeight: 252,
        filter: "bicubic",
      });
      const ticksAtReturn = ticks;
      await job;
      clearInterval(timer);
      // The specification runs synchronously: the job is done before any timer can fire.
      expect(ticks > ticksAtReturn, pool.backend).toBe(offLoop);
    }
  });

  it("runs at most `concurrency` jobs at once; the rest wait in order", async () => {
    const pool = new ImagingPool({ backend: "native", concurrency: 2, threads: 1 });
    let active = 0;
    let peak = 0;
    const order: number[] = [];
    await Promise.all(
      Array.from({ length: 6 }, (_, i) =>
        pool.schedule(async () => {
          active++;
          peak = Math.max(peak, active);
          expect(pool.stats().active).toBeLessThanOrEqual(2);
          await new Promise((r) => setTimeout(r, 5));
          order.push(i);
          active--;
        }),
      ),
    );
    expect(peak).toBe(2);
    expect(order).toEqual([0, 1, 2, 3, 4, 5]);
    expect(pool.stats()).toEqual({ active: 0, kernels: 0, waiting: 0, completed: 6 });
  });

  it("native kernels write every output value (outputs come unzeroed)", async () => {
    const addon = loadNativeImaging().addon!;
    const W = 37;
    const H = 23;
    const dirty = (n: number) => new Uint8Array(n).fill(0xab);
    const poly = dirty(W * H);
    const polygons = [[3, 2, 30, 5, 12, 20]];
    await addon.polygons({
      coords: Float64Array.from(polygons[0]),
      ringStarts: Int32Array.of(0, 6),
      width: W,
      height: H,
      out: poly,
      threads: 2,
    });
    expect(same(poly, regionToMask({ kind: "polygon", polygons }, W, H).data)).toBe(true);
    const rle = dirty(W * H);
    await addon.rle({
      counts: Float64Array.of(100, 300, W * H - 400),
      width: W,
      height: H,
      out: rle,
      threads: 2,
    });
    expect(
      same(
        rle,
        regionToMask({ kind: "rle", rle: { size: [H, W], counts: [100, 300, W * H - 400] } }, W, H).data,
      ),
    ).toBe(true);
    const box = dirty(W * H);
    expect(
      await addon.fill({ out: box, width: W, height: H, left: 2, top: 3, right: 9, bottom: 7, threads: 1 }),
    ).toBe(28);
    expect(same(box, regionToMask({ kind: "box", box: [2, 3, 9, 7] }, W, H).data)).toBe(true);
    const planes = new Float32Array(3 * 40 * 40).fill(7);
    const src = bytes(W * H * 3, 4);
    const lut = Float32Array.from({ length: 768 }, (_, i) => i);
    await addon.planes({ src, width: W, height: H, lut, frame: 40, out: planes, threads: 2 });
    expect(same(planes, await toPlanes(typescript, src, W, H, lut, 40))).toBe(true);
  });

  it("an image whose header breaks a limit is refused before any job is queued", async () => {
    const pool = new ImagingPool({ backend: "native" });
    const png = await makeImage(300, 100);
    await expect(decodeImage(png, { maxSide: 200 }, { pool })).rejects.toMatchObject({
      code: "image_too_many_pixels",
      message: "The image is 300x100; its longest side may be at most 200 pixels.",
    });
    await expect(decodeImage(png, { maxPixels: 29_999 }, { pool })).rejects.toMatchObject({
      code: "image_too_many_pixels",
    });
    await expect(decodeImage(png, { maxBytes: 10 }, { pool })).rejects.toMatchObject({
      code: "image_too_large",
    });
    expect(pool.stats()).toEqual({ active: 0, kernels: 0, waiting: 0, completed: 0 });
    const ok = await decodeImage(png, { maxSide: 300 }, { pool });
    expect(ok.sha256).toBe(createHash("sha256").update(png).digest("hex"));
    expect(pool.stats().completed).toBe(2); // the decode and the hash
  });

  it("native arguments of the wrong size are refused with a RangeError, not a crash", async () => {
    const addon = loadNativeImaging().addon!;
    expect(() =>
      addon.threshold({ src: new Uint8Array(10), threshold: 1, one: 1, out: new Uint8Array(9), threads: 1 }),
    ).toThrow(RangeError);
    expect(() =>
      addon.resample({
        src: new Uint8Array(11),
        kind: 3,
        width: 2,
        height: 2,
        out: new Uint8Array(12),
        threads: 1,
      }),
    ).toThrow(/src has 11 elements, needs 12/);
    expect(() =>
      addon.bilinear({
        src: new Float32Array(4),
        stride: 2,
        rows: 2,
        window: { left: 0, top: 0, width: 2, height: 2 },
        x: { i0: Int32Array.of(0, 5), i1: Int32Array.of(1, 1), w1: new Float32Array(2) },
        y: { i0: Int32Array.of(0, 0), i1: Int32Array.of(1, 1), w1: new Float32Array(2) },
        out: new Float32Array(4),
        threads: 1,
      }),
    ).toThrow(/outside the input/);
    expect(() => new ImagingPool({ threads: 0 })).toThrow(/whole number >= 1/);
  });
});
