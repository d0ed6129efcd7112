import { mkdtempSync, readFileSync, rmSync, writeFileSync, cpSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { main } from "../src/cli/index.js";
import { maxAbsDiff, type Tensor } from "../src/common/tensor.js";
import sharp from "sharp";
import { convertVisionCheckpoint } from "../src/vision/convert/index.js";
import {
  AlphaClipEncoder,
  decodeImage,
  inMemoryStateDict,
  writeAlphaClipModelFolder,
  decodeMaskImage,
  preprocessForAlphaClipReadme,
  preprocessForLlava,
  regionToMask,
  type Mask,
  type RgbImage,
} from "../src/vision/index.js";

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const golden = path.resolve(repoRoot, "test/fixtures/golden/alpha-clip-tiny");
const manifest = JSON.parse(readFileSync(path.join(golden, "manifest.json"), "utf8")) as {
  config: { input_resolution: number; heads: number; width: number };
  grid: number;
  files: Record<string, { file: string; shape: number[] }>;
};
const R = manifest.config.input_resolution;
const G = manifest.grid;
const W = manifest.config.width;

function goldenF32(name: string): Float32Array {
  const buf = readFileSync(path.join(golden, manifest.files[name].file));
  return new Float32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.length));
}
const code = (c: string) => expect.objectContaining({ name: "RegionVqaError", code: c });

let tmp: string;
let modelDir: string;
let encoder: AlphaClipEncoder;
let image: RgbImage;
let mask: Mask;
const logs: string[] = [];

beforeAll(async () => {
  tmp = mkdtempSync(path.join(os.tmpdir(), "vision-encoder-test-"));
  modelDir = path.join(tmp, "alpha-clip-tiny");
  await convertVisionCheckpoint({
    checkpoint: path.join(golden, "tiny_alphaclip_visual.pth"),
    out: modelDir,
    heads: manifest.config.heads,
  });
  encoder = await AlphaClipEncoder.load(modelDir, {
    device: "auto",
    threads: 1,
    logger: { info: (m) => logs.push(m) },
  });
  image = await decodeImage(readFileSync(path.join(golden, "test_image.png")));
  mask = await decodeMaskImage(readFileSync(path.join(golden, "test_mask.png")), image.width, image.height);
});

afterAll(async () => {
  await encoder?.dispose();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

/** One region's slice of a batched output. */
function row(t: Tensor, i: number): Float32Array {
  const size = t.data.length / t.shape[0];
  return t.data.subarray(i * size, (i + 1) * size);
}

describe("AlphaClipEncoder on the golden tiny model", () => {
  it("auto picks the CPU on this machine and says so", () => {
    expect(encoder.provider).toBe("cpu");
    expect(logs.join("\n")).toMatch(
      /ONNX Runtime on the CPU with 1 threads \(auto: CUDA unavailable: .*; WebGPU: /,
    );
    expect(encoder.imageSize).toBe(R);
  });

  it.each([
    ["llava_mask", "mask"],
    ["llava_ones", "whole"],
  ] as const)(
    "%s: decode -> region -> preprocess -> worker encoder matches the reference features",
    async (caseName, region) => {
      const m = region === "mask" ? regionToMask({ kind: "mask", mask }, image.width, image.height) : null;
      const pre = preprocessForLlava(image, m, encoder.imageSize);
      const out = await encoder.encode(pre);
      expect(out.features!.shape).toEqual([1, G * G, W]);
      expect(maxAbsDiff(out.features!.data, goldenF32(`${caseName}_llava_features`))).toBeLessThanOrEqual(
        1e-4,
      );
      expect(out.imageEmbed!.shape).toEqual([1, 32]);
      expect(maxAbsDiff(out.imageEmbed!.data, goldenF32(`${caseName}_image_embed`))).toBeLessThanOrEqual(
        1e-4,
      );
    },
  );

  it("the empty-mask and README-path cases match too", async () => {
    const empty: Mask = {
      width: image.width,
      height: image.height,
      data: new Uint8Array(image.width * image.height),
    };
    const zeros = await encoder.encode(preprocessForLlava(image, empty, R));
    expect(maxAbsDiff(zeros.features!.data, goldenF32("llava_zeros_llava_features"))).toBeLessThanOrEqual(
      1e-4,
    );
    const readme = await encoder.encode(
      preprocessForAlphaClipReadme(image, mask, R, { maskGeometry: "reference" }),
    );
    expect(maxAbsDiff(readme.features!.data, goldenF32("readme_mask_llava_features"))).toBeLessThanOrEqual(
      1e-4,
    );
    expect(maxAbsDiff(readme.imageEmbed!.data, goldenF32("readme_mask_image_embed"))).toBeLessThanOrEqual(
      1e-4,
    );
  });

  it("a batch of N regions equals N single runs (shared [1,3,R,R] image is repeated)", async () => {
    const box = regionToMask({ kind: "box", box: [10, 5, 60, 50] }, image.width, image.height);
    const regions: Array<Mask | null> = [mask, null, box];
    const singles = regions.map((m) => preprocessForLlava(image, m, R));
    const alpha = new Float32Array(regions.length * R * R);
    singles.forEach((s, i) => alpha.set(s.alpha.data, i * R * R));
    const batched = await encoder.encode({
      pixelValues: singles[0].pixelValues,
      alpha: { data: alpha, shape: [3, 1, R, R] },
    });
    expect(batched.features!.shape).toEqual([3, G * G, W]);
    for (let i = 0; i < regions.length; i++) {
      const single = await encoder.encode(singles[i]);
      expect(maxAbsDiff(row(batched.features!, i), single.features!.data)).toBeLessThanOrEqual(1e-5);
    }
    // the regions really differ (alpha matters)
    expect(maxAbsDiff(row(batched.features!, 0), row(batched.features!, 1))).toBeGreaterThan(0.01);
  });

  it("concurrent requests are answered in order, each with its own result", async () => {
    const a = preprocessForLlava(image, mask, R);
    const b = preprocessForLlava(image, null, R);
    const results = await Promise.all([encoder.encode(a), encoder.encode(b), encoder.encode(a)]);
    expect(maxAbsDiff(results[0].features!.data, goldenF32("llava_mask_llava_features"))).toBeLessThanOrEqual(
      1e-4,
    );
    expect(maxAbsDiff(results[1].features!.data, goldenF32("llava_ones_llava_features"))).toBeLessThanOrEqual(
      1e-4,
    );
    expect(maxAbsDiff(results[2].features!.data, results[0].features!.data)).toBe(0);
  });

  it("rejects tensors of the wrong shape with model_mismatch", async () => {
    const pre = preprocessForLlava(image, mask, R);
    await expect(
      encoder.encode({
        pixelValues: pre.pixelValues,
        alpha: { data: new Float32Array(R * R), shape: [1, 1, R, R - 1] },
      }),
    ).rejects.toEqual(code("model_mismatch"));
    const two = { data: new Float32Array(2 * R * R), shape: [2, 1, R, R] };
    const threeImages = { data: new Float32Array(3 * 3 * R * R), shape: [3, 3, R, R] };
    await expect(encoder.encode({ pixelValues: threeImages, alpha: two })).rejects.toEqual(
      code("model_mismatch"),
    );
  });
});

describe("AlphaClipEncoder loading and failures", () => {
  it("device cuda fails clearly where CUDA cannot be used", async () => {
    const err = await AlphaClipEncoder.load(modelDir, { device: "cuda", threads: 1 }).catch(
      (e: unknown) => e,
    );
    expect(err).toEqual(code("device_unavailable"));
    expect((err as Error).message).toMatch(/CUDA was requested/);
  });

  it("a missing folder, a wrong kind and a broken ONNX file are typed errors", async () => {
    await expect(AlphaClipEncoder.load(path.join(tmp, "nope"))).rejects.toEqual(code("model_not_found"));
    const other = path.join(tmp, "other-kind");
    cpSync(modelDir, other, { recursive: true });
    const m = JSON.parse(readFileSync(path.join(other, "manifest.json"), "utf8"));
    writeFileSync(path.join(other, "manifest.json"), JSON.stringify({ ...m, kind: "llava-projector" }));
    await expect(AlphaClipEncoder.load(other)).rejects.toEqual(code("model_invalid"));
    const broken = path.join(tmp, "broken");
    cpSync(modelDir, broken, { recursive: true });
    const onnxFile = m.files.find((f: { role: string }) => f.role === "onnx").path;
    writeFileSync(path.join(broken, onnxFile), "not an onnx model");
    await expect(AlphaClipEncoder.load(broken, { device: "cpu", threads: 1 })).rejects.toEqual(
      code("model_invalid"),
    );
  });

  it("dispose rejects queued and later calls with aborted (the worker itself: ort-session.test.ts)", async () => {
    const pre = preprocessForLlava(image, mask, R);
    // dispose while runs are queued: the queued ones reject with aborted, dispose waits for the worker
    const second = await AlphaClipEncoder.load(modelDir, { device: "cpu", threads: 1 });
    const queued = [second.encode(pre), second.encode(pre), second.encode(pre)].map((q) =>
      expect(q).rejects.toEqual(code("aborted")),
    );
    await second.dispose();
    await Promise.all(queued);
    await expect(second.encode(pre)).rejects.toEqual(code("aborted"));
  });
});

describe("the event loop stays free while the encoder works", () => {
  it("timers keep firing during a long batched run in the worker", async () => {
    // A mid-size random model (width 128, 4 blocks, 224 px) and a batch big enough to take a while.
    const c = {
      width: 128,
      layers: 4,
      heads: 2,
      patchSize: 14,
      imageSize: 224,
      gridSize: 16,
      outputDim: 64,
      llavaFeatureLayer: 3,
    };
    let seed = 1;
    const rand = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff - 0.5) * 0.04;
    const t = (shape: number[], fill?: number) => {
      const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
      for (let i = 0; i < data.length; i++) data[i] = fill ?? rand();
      return { shape, data };
    };
    const w = c.width;
    const tensors: Record<string, { shape: number[]; data: Float32Array }> = {
      class_embedding: t([w]),
      positional_embedding: t([c.gridSize ** 2 + 1, w]),
      proj: t([w, c.outputDim]),
      "conv1.weight": t([w, 3, 14, 14]),
      "conv1_alpha.weight": t([w, 1, 14, 14]),
      "ln_pre.weight": t([w], 1),
      "ln_pre.bias": t([w], 0),
      "ln_post.weight": t([w], 1),
      "ln_post.bias": t([w], 0),
    };
    for (let i = 0; i < c.layers; i++) {
      const b = `transformer.resblocks.${i}.`;
      Object.assign(tensors, {
        [`${b}attn.in_proj.weight`]: t([3 * w, w]),
        [`${b}attn.in_proj.bias`]: t([3 * w]),
        [`${b}attn.out_proj.weight`]: t([w, w]),
        [`${b}attn.out_proj.bias`]: t([w]),
        [`${b}ln_1.weight`]: t([w], 1),
        [`${b}ln_1.bias`]: t([w], 0),
        [`${b}mlp.c_fc.weight`]: t([4 * w, w]),
        [`${b}mlp.c_fc.bias`]: t([4 * w]),
        [`${b}mlp.c_proj.weight`]: t([w, 4 * w]),
        [`${b}mlp.c_proj.bias`]: t([w]),
        [`${b}ln_2.weight`]: t([w], 1),
        [`${b}ln_2.bias`]: t([w], 0),
      });
    }
    const dir = path.join(tmp, "mid");
    await writeAlphaClipModelFolder(inMemoryStateDict(tensors), c, dir);
    const mid = await AlphaClipEncoder.load(dir, { device: "cpu", threads: 1 });
    try {
      const R2 = c.imageSize;
      const pixelValues = { data: new Float32Array(3 * R2 * R2).fill(0.1), shape: [1, 3, R2, R2] };
      const batch = (n: number) => ({
        data: new Float32Array(n * R2 * R2).fill(1.9231),
        shape: [n, 1, R2, R2],
      });
      // Size the batch to this machine: the run must take well over 300 ms to say anything.
      const t0 = performance.now();
      await mid.encode({ pixelValues, alpha: batch(8) });
      const n = Math.min(512, Math.max(24, Math.ceil((8 * 700) / Math.max(1, performance.now() - t0))));
      const alpha = batch(n);
      let last = performance.now();
      let maxGap = 0;
      const timer = setInterval(() => {
        const now = performance.now();
        maxGap = Math.max(maxGap, now - last);
        last = now;
      }, 5);
      const started = performance.now();
      const out = await mid.encode({ pixelValues, alpha });
      const encodeMs = performance.now() - started;
      clearInterval(timer);
      expect(out.features!.shape).toEqual([n, 256, w]);
      // Meaningful only if the run took a while; a blocking run would leave one gap as long as itself.
      expect(encodeMs).toBeGreaterThan(300);
      expect(maxGap).toBeLessThan(encodeMs / 2);
    } finally {
      await mid.dispose();
    }
  });
});

describe("region-vqa encode (the real CLI command, in-process)", () => {
  async function runCli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    const out: string[] = [];
    const err: string[] = [];
    const origOut = process.stdout.write.bind(process.stdout);
    const origErr = process.stderr.write.bind(process.stderr);
    process.stdout.write = ((chunk: string | Uint8Array) => (
      out.push(String(chunk)),
      true
    )) as typeof process.stdout.write;
    process.stderr.write = ((chunk: string | Uint8Array) => (
      err.push(String(chunk)),
      true
    )) as typeof process.stderr.write;
    const origConsoleError = console.error;
    console.error = (...a: unknown[]) => void err.push(a.join(" ") + "\n");
    try {
      const exit = await main(["node", "region-vqa", ...args]);
      return { code: exit, stdout: out.join(""), stderr: err.join("") };
    } finally {
      process.stdout.write = origOut;
      process.stderr.write = origErr;
      console.error = origConsoleError;
    }
  }

  it("--mask writes the golden features as raw float32 LE [G*G, W] and prints one JSON line", async () => {
    const outFile = path.join(tmp, "feats.bin");
    const res = await runCli([
      "encode",
      "--model",
      modelDir,
      "--image",
      path.join(golden, "test_image.png"),
      "--mask",
      path.join(golden, "test_mask.png"),
      "--out",
      outFile,
      "--threads",
      "1",
    ]);
    expect(res.code).toBe(0);
    const lines = res.stdout.trim().split("\n");
    expect(lines).toHaveLength(1);
    const summary = JSON.parse(lines[0]);
    expect(summary).toMatchObject({
      shape: [G * G, W],
      dtype: "float32",
      provider: "cpu",
      region: { kind: "mask" },
      image: { width: 97, height: 61 },
    });
    const buf = readFileSync(outFile);
    expect(buf.length).toBe(G * G * W * 4);
    const values = new Float32Array(G * G * W);
    for (let i = 0; i < values.length; i++) values[i] = buf.readFloatLE(i * 4);
    expect(maxAbsDiff(values, goldenF32("llava_mask_llava_features"))).toBeLessThanOrEqual(1e-4);
    expect(res.stderr).toMatch(/vision encoder: ONNX Runtime on the CPU .*CUDA unavailable/);
  });

  it("--alpha uses the image's own alpha channel as the region", async () => {
    // The golden image with the golden mask as its alpha channel: same features as --mask.
    const rgba = new Uint8Array(image.width * image.height * 4);
    for (let i = 0; i < image.width * image.height; i++) {
      rgba.set(image.data.subarray(i * 3, i * 3 + 3), i * 4);
      rgba[i * 4 + 3] = mask.data[i] ? 255 : 0;
    }
    const rgbaFile = path.join(tmp, "rgba.png");
    await sharp(Buffer.from(rgba), { raw: { width: image.width, height: image.height, channels: 4 } })
      .png()
      .toFile(rgbaFile);
    const outFile = path.join(tmp, "alpha.bin");
    const res = await runCli([
      "encode",
      "--model",
      modelDir,
      "--image",
      rgbaFile,
      "--alpha",
      "--out",
      outFile,
      "--device",
      "cpu",
      "--threads",
      "1",
    ]);
    expect(res.code).toBe(0);
    expect(JSON.parse(res.stdout).region.kind).toBe("alpha");
    const buf = readFileSync(outFile);
    const values = new Float32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.length));
    expect(maxAbsDiff(values, goldenF32("llava_mask_llava_features"))).toBeLessThanOrEqual(1e-4);
    // an RGB image has no alpha channel to use
    const noAlpha = await runCli([
      "encode",
      "--model",
      modelDir,
      "--image",
      path.join(golden, "test_image.png"),
      "--alpha",
      "--out",
      outFile,
      "--device",
      "cpu",
      "--threads",
      "1",
    ]);
    expect(noAlpha.code).toBe(2);
    expect(noAlpha.stderr).toMatch(/has no alpha channel/);
  });

  it("--box works and a bad box exits with code 2 and a clear message", async () => {
    const outFile = path.join(tmp, "box.bin");
    const ok = await runCli([
      "encode",
      "--model",
      modelDir,
      "--image",
      path.join(golden, "test_image.png"),
      "--box",
      "10,5,60,50",
      "--out",
      outFile,
      "--threads",
      "1",
    ]);
    expect(ok.code).toBe(0);
    expect(JSON.parse(ok.stdout).region).toEqual({ kind: "box", pixels: 50 * 45 });
    const bad = await runCli([
      "encode",
      "--model",
      modelDir,
      "--image",
      path.join(golden, "test_image.png"),
      "--box",
      "10,5,600,50",
      "--out",
      outFile,
      "--threads",
      "1",
    ]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/outside the 97x61 image.*\[box_invalid\]/);
    expect(bad.stdout).toBe("");
  });
});
