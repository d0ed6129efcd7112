/**
 * ONNX Runtime's bundled WebGPU provider (Dawn) on a real adapter: the golden Alpha-CLIP features
 * (fp32 within 1e-4, fp16 weights within their tolerance), the golden projector and the fused
 * encoder + projector graph, each against the reference or the CPU provider. Here and in CI the adapter
 * is Mesa's lavapipe, a software Vulkan driver: it proves the GPU code path is right, not fast.
 * `auto` must not pick such an adapter on its own, and says why.
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, expect, it } from "vitest";
import { isSoftwareDevice } from "../src/common/gpu.js";
import { maxAbsDiff } from "../src/common/tensor.js";
import { convertFusedVisionProjector, LlavaProjector } from "../src/projector/index.js";
import {
  AlphaClipEncoder,
  convertVisionCheckpoint,
  decodeImage,
  decodeMaskImage,
  preprocessForLlava,
  type Mask,
  type RgbImage,
} from "../src/vision/index.js";
import { describeWithGpu, gpuAdapter } from "./support/gpu.js";
import { goldenDir } from "./support/tiny-models.js";

const golden = path.join(goldenDir, "alpha-clip-tiny");
const MMPROJ = path.join(goldenDir, "llava-projector-tiny/tiny-mmproj-f16.gguf");
const R = 84;

function f32(file: string): Float32Array {
  const b = readFileSync(file);
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
}
const goldenF32 = (name: string) => f32(path.join(golden, `${name}.bin`));

describeWithGpu("WebGPU", () => {
  let tmp: string;
  let image: RgbImage;
  let mask: Mask;
  const folders: Record<"fp32" | "fp16", string> = { fp32: "", fp16: "" };

  beforeAll(async () => {
    tmp = mkdtempSync(path.join(os.tmpdir(), "rvqa-webgpu-"));
    for (const precision of ["fp32", "fp16"] as const) {
      folders[precision] = path.join(tmp, precision);
      await convertVisionCheckpoint({
        checkpoint: path.join(golden, "tiny_alphaclip_visual.pth"),
        out: folders[precision],
        heads: 4,
        precision,
      });
    }
    image = await decodeImage(readFileSync(path.join(golden, "test_image.png")));
    mask = await decodeMaskImage(readFileSync(path.join(golden, "test_mask.png")), image.width, image.height);
  });
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));

  // fp16 weights: the converter's own tolerance (vision-convert.test.ts), here on the GPU.
  for (const [precision, tolerance] of [
    ["fp32", 1e-4],
    ["fp16", 5e-3],
  ] as const) {
    it(`reproduces the golden encoder features and embeddings (${precision}, within ${tolerance})`, async () => {
      const logs: string[] = [];
      const encoder = await AlphaClipEncoder.load(folders[precision], {
        device: "webgpu",
        threads: 1,
        logger: { info: (m) => logs.push(m) },
      });
      try {
        expect(encoder.provider).toBe("webgpu");
        expect(logs.join("\n")).toContain(`ONNX Runtime on WebGPU (${gpuAdapter!.name})`);
        for (const [name, m] of [
          ["llava_mask", mask],
          ["llava_ones", null],
        ] as const) {
          const out = await encoder.encode(preprocessForLlava(image, m, R));
          expect(maxAbsDiff(out.features!.data, goldenF32(`${name}_llava_features`))).toBeLessThan(tolerance);
          expect(maxAbsDiff(out.imageEmbed!.data, goldenF32(`${name}_image_embed`))).toBeLessThan(tolerance);
        }
      } finally {
        await encoder.dispose();
      }
    });
  }

  it("reproduces the golden projector output", async () => {
    const projector = await LlavaProjector.load(MMPROJ, { device: "webgpu", threads: 1 });
    try {
      for (const c of ["llava_mask", "llava_ones", "llava_zeros"]) {
        const out = await projector.project({ data: goldenF32(`${c}_llava_features`), shape: [36, 64] });
        const expected = f32(path.join(goldenDir, `llava-projector-tiny/${c}_projected.bin`));
        expect(maxAbsDiff(out.data, expected)).toBeLessThan(1e-4);
      }
    } finally {
      await projector.dispose();
    }
  });

  it("runs the fused encoder + projector graph like the CPU does", async () => {
    const fused = path.join(tmp, "fused");
    await convertFusedVisionProjector({
      checkpoint: path.join(golden, "tiny_alphaclip_visual.pth"),
      out: fused,
      heads: 4,
      projector: MMPROJ,
    });
    const input = preprocessForLlava(image, mask, R);
    const results: Float32Array[] = [];
    for (const device of ["cpu", "webgpu"] as const) {
      const encoder = await AlphaClipEncoder.load(fused, { device, threads: 1 });
      try {
        expect(encoder.provider).toBe(device);
        const out = await encoder.encode(input);
        expect(out.projected!.shape).toEqual([1, 36, 96]);
        results.push(out.projected!.data);
      } finally {
        await encoder.dispose();
      }
    }
    expect(maxAbsDiff(results[0], results[1])).toBeLessThan(1e-4);
    expect(maxAbsDiff(results[1], goldenF32("../llava-projector-tiny/llava_mask_projected"))).toBeLessThan(
      1e-4,
    );
  });

  it.runIf(gpuAdapter && isSoftwareDevice(gpuAdapter))(
    "auto takes the CPU when the only adapter is a software one, and says so",
    async () => {
      const logs: string[] = [];
      const encoder = await AlphaClipEncoder.load(folders.fp32, {
        device: "auto",
        threads: 1,
        logger: { info: (m) => logs.push(m) },
      });
      await encoder.dispose();
      expect(encoder.provider).toBe("cpu");
      expect(logs.join("\n")).toContain(
        `WebGPU: the only adapter is ${gpuAdapter!.name}, a software device (auto never picks one)`,
      );
    },
  );
});
