import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { readGgufFileInfo } from "node-llama-cpp";
import { afterAll, describe, expect, it } from "vitest";
import {
  float16BitsToFloat32,
  float32ToFloat16Bits,
  gguf,
  openGgufFile,
  roundToFloat16,
  writeGgufFile,
} from "../src/common/gguf/index.js";
import { isRegionVqaError } from "../src/common/errors.js";

const dir = mkdtempSync(path.join(tmpdir(), "gguf-writer-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Deterministic pseudo-random values (LCG) so failures reproduce. */
function randomValues(n: number, seed: number, scale = 1): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = (s / 4294967296 - 0.5) * 2 * scale;
  }
  return out;
}

describe("float16 conversion", () => {
  it("round-trips every finite half value and rounds midpoints to even", () => {
    for (let h = 0; h < 65536; h++) {
      const exp = (h >>> 10) & 0x1f;
      const v = float16BitsToFloat32(h);
      if (exp === 0x1f && (h & 0x3ff) !== 0) {
        expect(Number.isNaN(v)).toBe(true);
        expect((float32ToFloat16Bits(v) & 0x7c00) === 0x7c00 && (float32ToFloat16Bits(v) & 0x3ff) !== 0).toBe(
          true,
        );
        continue;
      }
      expect(float32ToFloat16Bits(v)).toBe(h);
    }
    // 1 + 2^-11 is exactly between 1 and 1 + 2^-10: ties go to the even mantissa (1.0).
    expect(float16BitsToFloat32(float32ToFloat16Bits(1 + 2 ** -11))).toBe(1);
    // 1 + 3 * 2^-11 is between 1 + 2^-10 (odd) and 1 + 2^-9 (even): goes up.
    expect(float16BitsToFloat32(float32ToFloat16Bits(1 + 3 * 2 ** -11))).toBe(1 + 2 ** -9);
    expect(float32ToFloat16Bits(65520)).toBe(0x7c00); // rounds to inf
    expect(float32ToFloat16Bits(65519)).toBe(0x7bff); // max half
    expect(float32ToFloat16Bits(2 ** -25)).toBe(0); // tie between 0 and smallest subnormal -> 0
    expect(float32ToFloat16Bits(2 ** -25 * 1.5)).toBe(1);
    expect(float32ToFloat16Bits(-0)).toBe(0x8000);
  });
});

describe("writeGgufFile", () => {
  it("writes a file node-llama-cpp reads back: metadata, tensor names/dims/offsets, data", async () => {
    const file = path.join(dir, "roundtrip.gguf");
    const w = randomValues(7 * 5, 1);
    const b = randomValues(7, 2);
    const big = randomValues(3 * 4 * 5 * 6, 3, 100);
    const lazy = randomValues(33, 4);
    const result = await writeGgufFile(file, {
      metadata: [
        gguf.str("general.architecture", "clip"),
        gguf.str("general.name", "round trip ✓"),
        gguf.u8("test.u8", 250),
        gguf.i8("test.i8", -100),
        gguf.u16("test.u16", 65000),
        gguf.i16("test.i16", -32000),
        gguf.u32("test.u32", 4000000000),
        gguf.i32("test.i32", -2000000000),
        gguf.f32("test.f32", 0.25),
        gguf.f64("test.f64", Math.PI),
        gguf.bool("test.bool", true),
        gguf.u64("test.u64", 2n ** 60n),
        gguf.i64("test.i64", -123456789012n),
        gguf.arr.str("test.strs", ["a", "", "hello world"]),
        gguf.arr.i32("test.ints", [1, -2, 3]),
        gguf.arr.f32("test.floats", [0.5, -1.5]),
        gguf.arr.bool("test.bools", [true, false]),
      ],
      tensors: [
        { name: "lin.weight", shape: [7, 5], type: "F16", data: w },
        { name: "lin.bias", shape: [7], type: "F32", data: b },
        { name: "four.d", shape: [3, 4, 5, 6], type: "F32", data: big },
        { name: "lazy", shape: [33], type: "F16", data: async () => lazy },
      ],
    });
    expect(result.bytes).toBe(statSync(file).size);
    expect(existsSync(`${file}.partial`)).toBe(false);

    const info = await readGgufFileInfo(file, { readTensorInfo: true, logWarnings: false });
    expect(info.version).toBe(3);
    const md = info.metadata as unknown as Record<string, Record<string, unknown>>;
    expect(md.general.architecture).toBe("clip");
    expect(md.general.name).toBe("round trip ✓");
    const t = md.test;
    expect([t.u8, t.i8, t.u16, t.i16, t.u32, t.i32]).toEqual([
      250, -100, 65000, -32000, 4000000000, -2000000000,
    ]);
    expect(t.f32).toBe(0.25);
    expect(t.f64).toBe(Math.PI);
    expect(t.bool).toBe(true);
    expect(BigInt(t.u64 as bigint)).toBe(2n ** 60n);
    expect(BigInt(t.i64 as bigint)).toBe(-123456789012n);
    expect(t.strs).toEqual(["a", "", "hello world"]);
    expect(t.ints).toEqual([1, -2, 3]);
    expect(t.floats).toEqual([0.5, -1.5]);
    expect(t.bools).toEqual([true, false]);

    const tensors = info.fullTensorInfo ?? [];
    expect(tensors.map((x) => x.name)).toEqual(["lin.weight", "lin.bias", "four.d", "lazy"]);
    expect(tensors.map((x) => x.dimensions.map(Number))).toEqual([[5, 7], [7], [6, 5, 4, 3], [33]]);
    expect(tensors.map((x) => x.ggmlType)).toEqual([1, 0, 0, 1]);
    for (let i = 0; i < tensors.length; i++) {
      expect(Number(tensors[i].fileOffset)).toBe(result.tensors[i].fileOffset);
      expect(Number(tensors[i].fileOffset) % 32).toBe(0);
    }

    // Raw bytes at node-llama-cpp's offsets hold exactly our data.
    const bytes = readFileSync(file);
    const at = (i: number, n: number) =>
      new Float32Array(bytes.buffer.slice(bytes.byteOffset + Number(tensors[i].fileOffset)).slice(0, n * 4));
    expect(Array.from(at(1, 7))).toEqual(Array.from(b));
    expect(Array.from(at(2, big.length))).toEqual(Array.from(big));

    // Our reader decodes F16 with the expected rounding (and F32 exactly).
    const g = await openGgufFile(file);
    expect(Array.from(await g.readTensor("lin.weight"))).toEqual(Array.from(roundToFloat16(w)));
    expect(Array.from(await g.readTensor("lazy"))).toEqual(Array.from(roundToFloat16(lazy)));
    expect(Array.from(await g.readTensor("four.d"))).toEqual(Array.from(big));
    expect(g.tensors.get("lin.weight")?.shape).toEqual([7, 5]);
    const fp16Err = Math.max(...Array.from(w, (v, i) => Math.abs(v - roundToFloat16(w)[i])));
    expect(fp16Err).toBeGreaterThan(0);
    expect(fp16Err).toBeLessThan(2 ** -11);
  });

  it("honours general.alignment", async () => {
    const file = path.join(dir, "aligned.gguf");
    await writeGgufFile(file, {
      metadata: [gguf.str("general.architecture", "x"), gguf.u32("general.alignment", 64)],
      tensors: [
        { name: "a", shape: [3], type: "F32", data: new Float32Array([1, 2, 3]) },
        { name: "b", shape: [5], type: "F16", data: new Float32Array([1, 2, 3, 4, 5]) },
      ],
    });
    const info = await readGgufFileInfo(file, { readTensorInfo: true, logWarnings: false });
    for (const t of info.fullTensorInfo ?? []) expect(Number(t.fileOffset) % 64).toBe(0);
    const g = await openGgufFile(file);
    expect(Array.from(await g.readTensor("b"))).toEqual([1, 2, 3, 4, 5]);
  });

  it("rejects bad input before writing anything", async () => {
    const file = path.join(dir, "bad.gguf");
    const t = (over: object) => ({
      name: "t",
      shape: [2],
      type: "F32" as const,
      data: new Float32Array(2),
      ...over,
    });
    await expect(
      writeGgufFile(file, { metadata: [], tensors: [t({ data: new Float32Array(3) })] }),
    ).rejects.toThrow(/3 values/);
    await expect(writeGgufFile(file, { metadata: [], tensors: [t({}), t({})] })).rejects.toThrow(/twice/);
    await expect(
      writeGgufFile(file, { metadata: [], tensors: [t({ name: "x".repeat(64) })] }),
    ).rejects.toThrow(/longer/);
    await expect(writeGgufFile(file, { metadata: [gguf.u8("k", 300)], tensors: [] })).rejects.toThrow(
      /uint8/,
    );
    // A lazily produced tensor of the wrong size fails mid-write: no file (and no .partial) is left.
    await expect(
      writeGgufFile(file, { metadata: [], tensors: [t({ data: () => new Float32Array(5) })] }),
    ).rejects.toThrow(/Float32Array of 2/);
    expect(existsSync(file) || existsSync(`${file}.partial`)).toBe(false);
  });

  it("reports truncated and non-GGUF files as model_invalid", async () => {
    const good = path.join(dir, "good.gguf");
    await writeGgufFile(good, {
      metadata: [gguf.str("general.architecture", "x")],
      tensors: [{ name: "w", shape: [64, 64], type: "F32", data: randomValues(4096, 9) }],
    });
    const bytes = readFileSync(good);
    const cut = path.join(dir, "cut.gguf");
    writeFileSync(cut, bytes.subarray(0, bytes.length - 1000));
    const err1 = await openGgufFile(cut).catch((e: unknown) => e);
    expect(isRegionVqaError(err1) && err1.code).toBe("model_invalid");
    expect((err1 as Error).message).toMatch(/truncated/);

    const header = path.join(dir, "header-cut.gguf");
    writeFileSync(header, bytes.subarray(0, 40));
    const err2 = await openGgufFile(header).catch((e: unknown) => e);
    expect(isRegionVqaError(err2) && err2.code).toBe("model_invalid");

    const notGguf = path.join(dir, "not.gguf");
    writeFileSync(notGguf, Buffer.from("this is not a gguf file at all, just text"));
    const err3 = await openGgufFile(notGguf).catch((e: unknown) => e);
    expect(isRegionVqaError(err3) && err3.code).toBe("model_invalid");
    expect((err3 as Error).message).toMatch(/not a GGUF/);

    const err4 = await openGgufFile(path.join(dir, "missing.gguf")).catch((e: unknown) => e);
    expect(isRegionVqaError(err4) && err4.code).toBe("model_not_found");
  });
});
