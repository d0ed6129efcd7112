import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import * as ort from "onnxruntime-node";
import { afterAll, describe, expect, it } from "vitest";
import {
  OnnxGraphBuilder,
  bfloat16ArrayToFloat32,
  encodeOnnxModel,
  float16ArrayToFloat32,
  float32ArrayToFloat16,
  float32ToFloat16Bits,
  floatAttr,
  writeOnnxModel,
} from "../src/common/onnx/index.js";

const tmpDir = fs.mkdtempSync(path.join(os.tmpdir(), "onnx-helpers-"));
afterAll(() => fs.rmSync(tmpDir, { recursive: true, force: true }));

const sessionOptions: ort.InferenceSession.SessionOptions = {
  intraOpNumThreads: 1,
  interOpNumThreads: 1,
  extra: { session: { intra_op: { allow_spinning: "0" } } },
};

function seeded(n: number, seed: number): Float32Array {
  let s = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s / 2 ** 32 - 0.5;
  }
  return out;
}

/** y = LayerNorm(x @ W + b) built with the helpers; W large enough to go external. */
function buildModel(precision: "fp32" | "fp16", w: Float32Array, b: Float32Array) {
  const g = new OnnxGraphBuilder({ graphName: "test" });
  const x = g.input("x", "float32", ["batch", 64]);
  const wName = g.initializer("w", w, [64, 32], { precision });
  const bName = g.initializer("b", b, [32], { precision });
  const mm = g.node("MatMul", [x, wName]);
  const add = g.node("Add", [mm, bName]);
  const scale = g.initializer("ln_w", new Float32Array(32).fill(1), [32]);
  const shift = g.initializer("ln_b", new Float32Array(32), [32]);
  const ln = g.node("LayerNormalization", [add, scale, shift], { axis: -1, epsilon: floatAttr(1e-5) });
  const shape = g.node("Reshape", [ln, g.int64([-1, 4, 8])]);
  g.output("y", "float32", ["batch", 4, 8], shape);
  return g.toModel();
}

function reference(x: Float32Array, w: Float32Array, b: Float32Array, rows: number): Float64Array {
  const out = new Float64Array(rows * 32);
  for (let r = 0; r < rows; r++) {
    const v = new Float64Array(32);
    for (let j = 0; j < 32; j++) {
      let s = b[j];
      for (let k = 0; k < 64; k++) s += x[r * 64 + k] * w[k * 32 + j];
      v[j] = s;
    }
    const mean = v.reduce((a, c) => a + c, 0) / 32;
    const variance = v.reduce((a, c) => a + (c - mean) ** 2, 0) / 32;
    for (let j = 0; j < 32; j++) out[r * 32 + j] = (v[j] - mean) / Math.sqrt(variance + 1e-5);
  }
  return out;
}

function maxAbs(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

describe("float16 / bfloat16 conversion", () => {
  it("rounds to nearest even and keeps specials", () => {
    expect(float32ToFloat16Bits(1)).toBe(0x3c00);
    expect(float32ToFloat16Bits(-2)).toBe(0xc000);
    expect(float32ToFloat16Bits(65504)).toBe(0x7bff);
    expect(float32ToFloat16Bits(65520)).toBe(0x7c00); // halfway to the next step rounds to Inf
    expect(float32ToFloat16Bits(2 ** -24)).toBe(0x0001); // smallest subnormal
    expect(float32ToFloat16Bits(2 ** -25)).toBe(0x0000); // tie rounds to even (zero)
    expect(float32ToFloat16Bits(1 + 2 ** -11)).toBe(0x3c00); // tie, even stays
    expect(float32ToFloat16Bits(1 + 3 * 2 ** -11)).toBe(0x3c02); // tie, odd rounds up
    expect(float32ToFloat16Bits(Infinity)).toBe(0x7c00);
    expect(Number.isNaN(float16ArrayToFloat32(Uint16Array.of(float32ToFloat16Bits(NaN)))[0])).toBe(true);
    const values = seeded(1000, 7).map((v) => v * 100);
    const back = float16ArrayToFloat32(float32ArrayToFloat16(values));
    for (let i = 0; i < values.length; i++) {
      expect(Math.abs(back[i] - values[i])).toBeLessThanOrEqual(Math.abs(values[i]) * 2 ** -11 + 1e-7);
    }
    expect(Array.from(bfloat16ArrayToFloat32(Uint16Array.of(0x3f80, 0xc040)))).toEqual([1, -3]);
  });
});

describe("OnnxGraphBuilder + writeOnnxModel", () => {
  const w = seeded(64 * 32, 1);
  const b = seeded(32, 2);
  const x = seeded(3 * 64, 3);
  const expected = reference(x, w, b, 3);

  for (const precision of ["fp32", "fp16"] as const) {
    it(`runs in ONNX Runtime with external data (${precision})`, async () => {
      const file = path.join(tmpDir, `m-${precision}.onnx`);
      const files = await writeOnnxModel(buildModel(precision, w, b), file, {
        externalDataThresholdBytes: 1024,
      });
      expect(files.map((f) => path.basename(f.path))).toEqual([
        `m-${precision}.onnx`,
        `m-${precision}.onnx.data`,
      ]);
      expect(fs.statSync(file + ".data").size).toBe(files[1].bytes);
      // the weight matrix is in the data file, not in the protobuf
      expect(files[0].bytes).toBeLessThan(64 * 32 * 2);
      expect(files[1].bytes).toBeGreaterThanOrEqual(64 * 32 * (precision === "fp32" ? 4 : 2));
      const session = await ort.InferenceSession.create(file, sessionOptions);
      const out = await session.run({ x: new ort.Tensor("float32", x, [3, 64]) });
      expect(out.y.dims).toEqual([3, 4, 8]);
      const err = maxAbs(out.y.data as Float32Array, expected);
      expect(err).toBeLessThan(precision === "fp32" ? 1e-4 : 2e-2);
      await session.release();
    });
  }

  it("encodes a self-contained model for loading from a buffer", async () => {
    const bytes = encodeOnnxModel(buildModel("fp32", w, b));
    const session = await ort.InferenceSession.create(bytes, sessionOptions);
    const out = await session.run({ x: new ort.Tensor("float32", x, [3, 64]) });
    expect(maxAbs(out.y.data as Float32Array, expected)).toBeLessThan(1e-4);
    await session.release();
  });

  it("rejects duplicate names and wrong data sizes", () => {
    const g = new OnnxGraphBuilder();
    g.input("x", "float32", [1]);
    expect(() => g.input("x", "float32", [1])).toThrow(/already used/);
    expect(() => g.initializer("w", new Float32Array(3), [2, 2])).toThrow(/3 values/);
    expect(() => g.initializer("big", Float32Array.of(1, 70000), [2], { precision: "fp16" })).toThrow(
      /big: value 70000 is outside the float16 range/,
    );
    expect(g.initializer("inf", Float32Array.of(1, Infinity), [2], { precision: "fp16" })).toBe("inf");
  });
});
