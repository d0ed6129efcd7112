import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import * as ort from "onnxruntime-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { isRegionVqaError } from "../src/common/errors.js";
import { maxAbsDiff } from "../src/common/tensor.js";
import {
  convertFusedVisionProjector,
  LlavaProjector,
  loadProjectorWeights,
  type ProjectorWeights,
} from "../src/projector/index.js";
import { convertVisionCheckpoint } from "../src/vision/convert/index.js";

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const golden = path.resolve(repoRoot, "test/fixtures/golden");
const CHECKPOINT = path.join(golden, "alpha-clip-tiny/tiny_alphaclip_visual.pth");
const MMPROJ = path.join(golden, "llava-projector-tiny/tiny-mmproj-f16.gguf");
const CASES = ["llava_mask", "llava_ones", "llava_zeros"] as const;

function f32File(file: string): Float32Array {
  const b = readFileSync(file);
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
}

const dir = mkdtempSync(path.join(tmpdir(), "projector-fused-"));
let weights: ProjectorWeights;
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function runFolder(folder: string, image: Float32Array, alpha: Float32Array, output: string) {
  const session = await ort.InferenceSession.create(path.join(folder, "model.onnx"), {
    intraOpNumThreads: 1,
    interOpNumThreads: 1,
    extra: { session: { intra_op: { allow_spinning: "0" } } },
  });
  try {
    expect(session.outputNames).toContain(output);
    const r = await session.run(
      {
        image: new ort.Tensor("float32", image, [1, 3, 84, 84]),
        alpha: new ort.Tensor("float32", alpha, [1, 1, 84, 84]),
      },
      [output],
    );
    return { data: new Float32Array(r[output].data as Float32Array), dims: r[output].dims.slice() };
  } finally {
    await session.release();
  }
}

describe("fused Alpha-CLIP + projector graph", () => {
  const visionDir = path.join(dir, "vision");
  const fusedDir = path.join(dir, "fused");

  beforeAll(async () => {
    weights = await loadProjectorWeights(MMPROJ);
    await convertVisionCheckpoint({ checkpoint: CHECKPOINT, out: visionDir, heads: 4 });
    await convertFusedVisionProjector({ checkpoint: CHECKPOINT, out: fusedDir, heads: 4, projector: MMPROJ });
  });

  it("writes a fused manifest whose only output is `projected`", () => {
    const m = JSON.parse(readFileSync(path.join(fusedDir, "manifest.json"), "utf8"));
    expect(m.kind).toBe("alpha-clip-llava-fused");
    expect(m.config.outputs).toEqual(["projected"]);
    expect(m.config.projector).toMatchObject({ inWidth: 64, hiddenWidth: 96, outWidth: 96 });
    expect(m.config.embeddingLength).toBe(96);
  });

  it("equals encoder-then-projector and the golden projected tokens", async () => {
    const image = f32File(path.join(golden, "alpha-clip-tiny/llava_pixel_values.bin"));
    const projector = await LlavaProjector.load(weights, { threads: 1 });
    try {
      for (const c of CASES) {
        const alpha = f32File(path.join(golden, `alpha-clip-tiny/${c}_alpha.bin`));
        const fused = await runFolder(fusedDir, image, alpha, "projected");
        expect(fused.dims).toEqual([1, 36, 96]);
        const features = await runFolder(visionDir, image, alpha, "llava_features");
        const twoStep = await projector.project({ data: features.data, shape: features.dims });
        const vsTwoStep = maxAbsDiff(fused.data, twoStep.data);
        const vsGolden = maxAbsDiff(
          fused.data,
          f32File(path.join(golden, `llava-projector-tiny/${c}_projected.bin`)),
        );
        console.log(
          `fused ${c}: vs encoder+projector ${vsTwoStep.toExponential(2)}, vs golden ${vsGolden.toExponential(2)}`,
        );
        expect(vsTwoStep).toBeLessThan(1e-4);
        expect(vsGolden).toBeLessThan(1e-4);
      }
    } finally {
      await projector.dispose();
    }
  });

  it("refuses a projector whose input width does not match the encoder", async () => {
    const narrow: ProjectorWeights = {
      inWidth: 32,
      hiddenWidth: 8,
      outWidth: 8,
      w0: new Float32Array(8 * 32),
      b0: new Float32Array(8),
      w2: new Float32Array(64),
      b2: new Float32Array(8),
    };
    const err = await convertFusedVisionProjector({
      checkpoint: CHECKPOINT,
      out: path.join(dir, "bad"),
      heads: 4,
      projector: narrow,
    }).catch((e: unknown) => e);
    expect(isRegionVqaError(err) && err.code).toBe("model_mismatch");
    expect((err as Error).message).toMatch(/64.*32/);
  });
});
