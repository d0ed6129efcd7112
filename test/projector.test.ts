import { copyFileSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { readGgufFileInfo } from "node-llama-cpp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { isRegionVqaError } from "../src/common/errors.js";
import { float32ArrayToFloat16Bits, gguf, writeGgufFile } from "../src/common/gguf/index.js";
import { maxAbsDiff } from "../src/common/tensor.js";
import {
  checkProjectorWidths,
  LlavaProjector,
  loadProjectorWeights,
  projectReference,
  readMmprojProjector,
  writeMmprojGguf,
  writeProjectorFolder,
  type ProjectorWeights,
} from "../src/projector/index.js";

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const golden = path.resolve(repoRoot, "test/fixtures/golden");
const MMPROJ = path.join(golden, "llava-projector-tiny/tiny-mmproj-f16.gguf");
const CASES = ["llava_mask", "llava_ones", "llava_zeros"] as const;

function f32File(file: string): Float32Array {
  const b = readFileSync(file);
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
}
const features = (c: string) => f32File(path.join(golden, `alpha-clip-tiny/${c}_llava_features.bin`));
const expected = (c: string) => f32File(path.join(golden, `llava-projector-tiny/${c}_projected.bin`));

async function errorOf(p: Promise<unknown> | (() => unknown)): Promise<unknown> {
  try {
    await (typeof p === "function" ? p() : p);
  } catch (err) {
    return err;
  }
  throw new Error("expected an error");
}

/** Minimal safetensors writer for test checkpoints (header JSON + little-endian data). */
function writeSafetensors(
  file: string,
  tensors: Record<string, { shape: number[]; data: Float32Array }>,
  dtype: "F32" | "F16",
): void {
  const header: Record<string, unknown> = { __metadata__: { format: "pt" } };
  const parts: Uint8Array[] = [];
  let offset = 0;
  for (const [name, t] of Object.entries(tensors)) {
    const bytes =
      dtype === "F32"
        ? new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength)
        : new Uint8Array(float32ArrayToFloat16Bits(t.data).buffer);
    header[name] = { dtype, shape: t.shape, data_offsets: [offset, offset + bytes.length] };
    parts.push(bytes);
    offset += bytes.length;
  }
  let json = JSON.stringify(header);
  while (json.length % 8 !== 0) json += " ";
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  writeFileSync(file, Buffer.concat([len, Buffer.from(json), ...parts]));
}

const dir = mkdtempSync(path.join(tmpdir(), "projector-test-"));
let weights: ProjectorWeights;

beforeAll(async () => {
  weights = await loadProjectorWeights(MMPROJ);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("projector weights from an mmproj GGUF", () => {
  it("reads only the mm.* tensors' bytes, with the right shapes", async () => {
    const w = await readMmprojProjector(MMPROJ);
    expect([w.inWidth, w.hiddenWidth, w.outWidth]).toEqual([64, 96, 96]);
    expect(w.source?.dtype).toBe("F16");
    const mmBytes = 96 * 64 * 2 + 96 * 4 + 96 * 96 * 2 + 96 * 4;
    expect(w.tensorBytesRead).toBe(mmBytes);
    expect(statSync(MMPROJ).size).toBeGreaterThan(mmBytes * 10);
  });

  it("ignores everything else in the file: garbage in the vision tower tensors changes nothing", async () => {
    const info = await readGgufFileInfo(MMPROJ, { readTensorInfo: true, logWarnings: false });
    const bytes = Buffer.from(readFileSync(MMPROJ));
    let firstOther = Infinity;
    for (const t of info.fullTensorInfo ?? []) {
      if (!t.name.startsWith("mm.")) firstOther = Math.min(firstOther, Number(t.fileOffset));
    }
    const mmEnd = Math.max(
      ...(info.fullTensorInfo ?? []).filter((t) => t.name.startsWith("mm.")).map((t) => Number(t.fileOffset)),
    );
    expect(firstOther).toBeGreaterThan(mmEnd);
    bytes.fill(0xff, firstOther); // NaN everywhere in the CLIP tower
    const file = path.join(dir, "garbage-tower.gguf");
    writeFileSync(file, bytes);
    const w = await readMmprojProjector(file);
    expect(maxAbsDiff(w.w0, weights.w0)).toBe(0);
    expect(maxAbsDiff(w.w2, weights.w2)).toBe(0);
    expect(maxAbsDiff(w.b2, weights.b2)).toBe(0);
  });

  it("float64 reference on the file's weights reproduces the golden outputs", () => {
    for (const c of CASES) {
      expect(maxAbsDiff(projectReference(weights, features(c)), expected(c))).toBeLessThan(1e-5);
    }
  });
});

describe("LlavaProjector in ONNX Runtime", () => {
  it("reproduces the golden projected tokens for all cases (in-process and in a worker)", async () => {
    for (const worker of [false, true]) {
      const p = await LlavaProjector.load(MMPROJ, { threads: 1, worker });
      try {
        expect([p.inWidth, p.hiddenWidth, p.outWidth]).toEqual([64, 96, 96]);
        for (const c of CASES) {
          const out = await p.project({ data: features(c), shape: [1, 36, 64] });
          expect(out.shape).toEqual([1, 36, 96]);
          const err = maxAbsDiff(out.data, expected(c));
          console.log(
            `projector ${worker ? "worker" : "in-process"} ${c}: max abs err ${err.toExponential(2)}`,
          );
          expect(err).toBeLessThan(1e-4);
        }
        // Batch of 3 in one run, and an unbatched [T, W] input.
        const batch = new Float32Array(3 * 36 * 64);
        CASES.forEach((c, i) => batch.set(features(c), i * 36 * 64));
        const outB = await p.project({ data: batch, shape: [3, 36, 64] });
        expect(outB.shape).toEqual([3, 36, 96]);
        CASES.forEach((c, i) =>
          expect(maxAbsDiff(outB.data.subarray(i * 36 * 96, (i + 1) * 36 * 96), expected(c))).toBeLessThan(
            1e-4,
          ),
        );
        const out2 = await p.project({ data: features("llava_ones"), shape: [36, 64] });
        expect(out2.shape).toEqual([36, 96]);
      } finally {
        await p.dispose();
      }
    }
  });

  it("loads the same weights from LLaVA-style safetensors checkpoints (F32 and F16)", async () => {
    for (const dtype of ["F32", "F16"] as const) {
      const file = path.join(dir, `llava-${dtype}.safetensors`);
      writeSafetensors(
        file,
        {
          "model.embed_tokens.weight": { shape: [10, 8], data: new Float32Array(80).fill(3) },
          "model.mm_projector.0.weight": { shape: [96, 64], data: weights.w0 },
          "model.mm_projector.0.bias": { shape: [96], data: weights.b0 },
          "model.mm_projector.2.weight": { shape: [96, 96], data: weights.w2 },
          "model.mm_projector.2.bias": { shape: [96], data: weights.b2 },
        },
        dtype,
      );
      const p = await LlavaProjector.load(file, { threads: 1 });
      try {
        for (const c of CASES) {
          const out = await p.project({ data: features(c), shape: [1, 36, 64] });
          const err = maxAbsDiff(out.data, expected(c));
          // The golden weights are F16 values already; F16 storage only rounds the (F32) biases here.
          expect(err).toBeLessThan(dtype === "F32" ? 1e-4 : 2e-3);
        }
      } finally {
        await p.dispose();
      }
    }
  });

  it("loads a LLaVA PyTorch checkpoint (torch.save, fp16 weights; tools/make-projector-checkpoint.py)", async () => {
    const file = path.join(repoRoot, "test/fixtures/llava-projector/llava-projector-fp16.bin");
    const w = await loadProjectorWeights(file);
    expect(w.source).toMatchObject({ format: "llava-checkpoint", dtype: "F16" });
    for (const k of ["w0", "b0", "w2", "b2"] as const) expect(maxAbsDiff(w[k], weights[k])).toBe(0);
    const p = await LlavaProjector.load(file, { threads: 1 });
    try {
      for (const c of CASES) {
        const out = await p.project({ data: features(c), shape: [1, 36, 64] });
        expect(maxAbsDiff(out.data, expected(c))).toBeLessThan(1e-4);
      }
    } finally {
      await p.dispose();
    }
  });

  it("rejects checkpoints without a projector with a clear message", async () => {
    const err = await errorOf(
      LlavaProjector.load(path.join(golden, "alpha-clip-tiny/tiny_alphaclip_visual.pth")),
    );
    expect(isRegionVqaError(err) && err.code).toBe("checkpoint_invalid");
    expect((err as Error).message).toMatch(/mm_projector\.0\.weight/);
  });

  it("width checks name both numbers", async () => {
    expect(() => checkProjectorWidths(weights, { encoderWidth: 64, llmEmbeddingLength: 96 })).not.toThrow();
    const e1 = await errorOf(() => checkProjectorWidths(weights, { encoderWidth: 1024 }));
    expect(isRegionVqaError(e1) && e1.code).toBe("model_mismatch");
    expect((e1 as Error).message).toMatch(/1024.*64/);
    const e2 = await errorOf(() =>
      checkProjectorWidths(weights, { encoderWidth: 64, llmEmbeddingLength: 4096 }),
    );
    expect(isRegionVqaError(e2) && e2.code).toBe("model_mismatch");
    expect((e2 as Error).message).toMatch(/96.*4096/);

    const p = await LlavaProjector.load(weights, { threads: 1 });
    try {
      const e3 = await errorOf(p.project({ data: new Float32Array(36 * 32), shape: [1, 36, 32] }));
      expect(isRegionVqaError(e3) && e3.code).toBe("model_mismatch");
      expect((e3 as Error).message).toMatch(/32.*64/);
    } finally {
      await p.dispose();
    }
  });

  it("truncated or corrupt GGUF files fail with model_invalid", async () => {
    const bytes = readFileSync(MMPROJ);
    const truncated = path.join(dir, "truncated.gguf");
    writeFileSync(truncated, bytes.subarray(0, 20000)); // header intact, mm.2.* data cut off
    const e1 = await errorOf(LlavaProjector.load(truncated));
    expect(isRegionVqaError(e1) && e1.code).toBe("model_invalid");
    expect((e1 as Error).message).toMatch(/truncated/);

    const headerCut = path.join(dir, "header-cut.gguf");
    writeFileSync(headerCut, bytes.subarray(0, 500));
    const e2 = await errorOf(LlavaProjector.load(headerCut));
    expect(isRegionVqaError(e2) && e2.code).toBe("model_invalid");

    const corrupt = Buffer.from(bytes);
    corrupt.writeBigUInt64LE(2n ** 62n, 8); // absurd tensor count
    const corruptFile = path.join(dir, "corrupt.gguf");
    writeFileSync(corruptFile, corrupt);
    const e3 = await errorOf(LlavaProjector.load(corruptFile));
    expect(isRegionVqaError(e3) && e3.code).toBe("model_invalid");

    const e4 = await errorOf(LlavaProjector.load(path.join(dir, "nope.gguf")));
    expect(isRegionVqaError(e4) && e4.code).toBe("model_not_found");
  });
});

describe("writing projectors", () => {
  it("writeMmprojGguf round-trips (f16 and f32) and files without clip.projector_type load", async () => {
    for (const precision of ["f16", "f32"] as const) {
      const file = path.join(dir, `written-${precision}.gguf`);
      await writeMmprojGguf(file, weights, { precision });
      const info = await readGgufFileInfo(file, { readTensorInfo: true, logWarnings: false });
      const md = info.metadata as unknown as {
        general: { architecture: string };
        clip: Record<string, unknown>;
      };
      expect(md.general.architecture).toBe("clip");
      expect(md.clip.has_llava_projector).toBe(true);
      expect(md.clip.projector_type).toBe("mlp");
      const w0 = info.fullTensorInfo?.find((t) => t.name === "mm.0.weight");
      expect(w0?.dimensions.map(Number)).toEqual([64, 96]);
      expect(w0?.ggmlType).toBe(precision === "f16" ? 1 : 0);
      const back = await readMmprojProjector(file);
      // golden weights are F16 values: both precisions store them exactly
      for (const k of ["w0", "b0", "w2", "b2"] as const) expect(maxAbsDiff(back[k], weights[k])).toBe(0);
    }
    const bare = path.join(dir, "bare.gguf");
    await writeGgufFile(bare, {
      metadata: [gguf.str("general.architecture", "clip")],
      tensors: [
        { name: "mm.0.weight", shape: [96, 64], type: "F16", data: weights.w0 },
        { name: "mm.0.bias", shape: [96], type: "F32", data: weights.b0 },
        { name: "mm.2.weight", shape: [96, 96], type: "F32", data: weights.w2 },
        { name: "mm.2.bias", shape: [96], type: "F32", data: weights.b2 },
      ],
    });
    const p = await LlavaProjector.load(bare, { threads: 1 });
    try {
      const out = await p.project({ data: features("llava_mask"), shape: [1, 36, 64] });
      expect(maxAbsDiff(out.data, expected("llava_mask"))).toBeLessThan(1e-4);
    } finally {
      await p.dispose();
    }

    const other = path.join(dir, "ldp.gguf");
    await writeGgufFile(other, {
      metadata: [gguf.str("general.architecture", "clip"), gguf.str("clip.projector_type", "ldp")],
      tensors: [{ name: "mm.model.mlp.1.weight", shape: [4, 4], type: "F32", data: new Float32Array(16) }],
    });
    const e = await errorOf(LlavaProjector.load(other));
    expect(isRegionVqaError(e) && e.code).toBe("model_invalid");
    expect((e as Error).message).toMatch(/"ldp" projector/);
  });

  it("projector model folders (fp32 and fp16) load through their manifest", async () => {
    for (const precision of ["fp32", "fp16"] as const) {
      const folder = path.join(dir, `folder-${precision}`);
      const manifest = await writeProjectorFolder(folder, weights, { precision });
      expect(manifest.kind).toBe("llava-projector");
      expect(manifest.config).toMatchObject({ inWidth: 64, hiddenWidth: 96, outWidth: 96 });
      expect(manifest.source?.format).toBe("mmproj-gguf");
      const onDisk = JSON.parse(readFileSync(path.join(folder, "manifest.json"), "utf8"));
      expect(onDisk.files[0].sha256).toMatch(/^[0-9a-f]{64}$/);
      const p = await LlavaProjector.load(folder, { threads: 1 });
      try {
        for (const c of CASES) {
          const out = await p.project({ data: features(c), shape: [1, 36, 64] });
          expect(maxAbsDiff(out.data, expected(c))).toBeLessThan(1e-4);
        }
      } finally {
        await p.dispose();
      }
    }
    const bad = path.join(dir, "folder-bad");
    copyFileSync(MMPROJ, path.join(dir, "unused.gguf"));
    await writeProjectorFolder(bad, weights);
    const m = JSON.parse(readFileSync(path.join(bad, "manifest.json"), "utf8"));
    m.kind = "alpha-clip-vision";
    writeFileSync(path.join(bad, "manifest.json"), JSON.stringify(m));
    const e = await errorOf(LlavaProjector.load(bad));
    expect(isRegionVqaError(e) && e.code).toBe("model_invalid");
  });
});
