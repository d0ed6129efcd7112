/** Checkpoint readers: torch.save zip (views, dtypes, prefixes, zip64) and safetensors. */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { float16ArrayToFloat32, float32ArrayToFloat16 } from "../src/common/onnx/index.js";
import { openStateDict, ZipFile, type StateDict } from "../src/vision/checkpoint/index.js";

const repoRoot = path.resolve(import.meta.dirname, "..");
const goldenCkpt = path.resolve(repoRoot, "test/fixtures/golden/alpha-clip-tiny/tiny_alphaclip_visual.pth");
const fixtures = path.join(repoRoot, "test/fixtures/alpha-clip-w48");
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "checkpoint-readers-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function withDict<T>(file: string, fn: (sd: StateDict) => T): T {
  const sd = openStateDict(file);
  try {
    return fn(sd);
  } finally {
    sd.close();
  }
}

/**
 * Re-pack a stored zip in zip64 form: every central-directory size and offset set to 0xFFFFFFFF with
 * the real values in zip64 extra fields, plus a zip64 end record and locator. That is the layout of
 * checkpoints over 4 GB, without writing 4 GB.
 */
function repackAsZip64(source: string, target: string): void {
  const zip = ZipFile.open(source);
  const parts: Buffer[] = [];
  const central: Buffer[] = [];
  let offset = 0;
  try {
    for (const entry of zip.entries.values()) {
      const name = Buffer.from(entry.name, "utf8");
      const data = zip.readEntry(entry);
      const local = Buffer.alloc(30);
      local.writeUInt32LE(0x04034b50, 0);
      local.writeUInt16LE(45, 4);
      local.writeUInt32LE(data.length, 18);
      local.writeUInt32LE(data.length, 22);
      local.writeUInt16LE(name.length, 26);
      parts.push(local, name, data);
      const cd = Buffer.alloc(46);
      cd.writeUInt32LE(0x02014b50, 0);
      cd.writeUInt16LE(45, 4);
      cd.writeUInt16LE(45, 6);
      cd.writeUInt32LE(0xffffffff, 20);
      cd.writeUInt32LE(0xffffffff, 24);
      cd.writeUInt16LE(name.length, 28);
      cd.writeUInt16LE(28, 30);
      cd.writeUInt32LE(0xffffffff, 42);
      const extra = Buffer.alloc(28);
      extra.writeUInt16LE(0x0001, 0);
      extra.writeUInt16LE(24, 2);
      extra.writeBigUInt64LE(BigInt(data.length), 4); // uncompressed size first, then compressed
      extra.writeBigUInt64LE(BigInt(data.length), 12);
      extra.writeBigUInt64LE(BigInt(offset), 20);
      central.push(cd, name, extra);
      offset += 30 + name.length + data.length;
    }
  } finally {
    zip.close();
  }
  const cdBytes = Buffer.concat(central);
  const zip64End = Buffer.alloc(56);
  zip64End.writeUInt32LE(0x06064b50, 0);
  zip64End.writeBigUInt64LE(44n, 4);
  zip64End.writeBigUInt64LE(BigInt(zip.entries.size), 24);
  zip64End.writeBigUInt64LE(BigInt(zip.entries.size), 32);
  zip64End.writeBigUInt64LE(BigInt(cdBytes.length), 40);
  zip64End.writeBigUInt64LE(BigInt(offset), 48);
  const locator = Buffer.alloc(20);
  locator.writeUInt32LE(0x07064b50, 0);
  locator.writeBigUInt64LE(BigInt(offset + cdBytes.length), 8);
  locator.writeUInt32LE(1, 16);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(0xffff, 8);
  end.writeUInt16LE(0xffff, 10);
  end.writeUInt32LE(0xffffffff, 12);
  end.writeUInt32LE(0xffffffff, 16);
  fs.writeFileSync(target, Buffer.concat([...parts, cdBytes, zip64End, locator, end]));
}

describe("torch.save zip checkpoints", () => {
  it("reads the golden checkpoint: keys, dtypes, shapes; the top folder name is found, not assumed", () => {
    withDict(goldenCkpt, (sd) => {
      expect(sd.source.format).toBe("pytorch-zip");
      expect(sd.keys()).toContain("conv1_alpha.weight");
      expect(sd.keys().filter((k) => k.startsWith("transformer.resblocks.2."))).toHaveLength(12);
      expect(sd.info("conv1.weight")).toEqual({ dtype: "F32", shape: [64, 3, 14, 14] });
      expect(sd.read("positional_embedding")).toHaveLength(37 * 64);
      expect(() => sd.read("nope")).toThrow(/no tensor "nope"/);
    });
    const zip = ZipFile.open(goldenCkpt);
    try {
      expect([...zip.entries.keys()].some((n) => n.endsWith("/data.pkl"))).toBe(true);
    } finally {
      zip.close();
    }
  });

  it("reads the same tensors from a zip64-form archive", () => {
    const repacked = path.join(tmp, "zip64.pth");
    repackAsZip64(goldenCkpt, repacked);
    withDict(goldenCkpt, (a) =>
      withDict(repacked, (b) => {
        expect(b.keys()).toEqual(a.keys());
        for (const k of a.keys()) expect(Array.from(b.read(k))).toEqual(Array.from(a.read(k)));
      }),
    );
  });

  it("views at storage offsets and a transposed (non-contiguous) view equal the safetensors copy", () => {
    withDict(path.join(fixtures, "w48-views.pth"), (views) =>
      withDict(path.join(fixtures, "w48-mixed.safetensors"), (st) => {
        expect(views.keys().sort()).toEqual(st.keys().sort());
        expect(views.info("proj")).toEqual({ dtype: "F32", shape: [48, 24] });
        for (const k of views.keys()) {
          // the safetensors file holds the fp16 rounding of the same weights
          const rounded = float16ArrayToFloat32(float32ArrayToFloat16(views.read(k)));
          expect(Array.from(st.read(k)), k).toEqual(Array.from(rounded));
        }
      }),
    );
  });

  it("fp16 storages, `module.` prefix and nesting under state_dict", () => {
    withDict(path.join(fixtures, "w48-fp16-module.pth"), (half) =>
      withDict(path.join(fixtures, "w48-views.pth"), (full) => {
        expect(half.keys().some((k) => k.startsWith("module."))).toBe(false);
        expect(half.keys().sort()).toEqual(full.keys().sort());
        expect(half.info("conv1.weight").dtype).toBe("F16");
        const k = "transformer.resblocks.1.mlp.c_fc.weight";
        expect(Array.from(half.read(k))).toEqual(
          Array.from(float16ArrayToFloat32(float32ArrayToFloat16(full.read(k)))),
        );
      }),
    );
  });

  it("bf16 storages widen exactly (bf16 = top 16 bits of float32)", () => {
    withDict(path.join(fixtures, "w48-bf16.pth"), (bf) =>
      withDict(path.join(fixtures, "w48-views.pth"), (full) => {
        expect(bf.info("proj").dtype).toBe("BF16");
        const a = bf.read("conv1.weight");
        const b = full.read("conv1.weight");
        const bits = new Uint32Array(a.buffer, a.byteOffset, a.length);
        let maxRel = 0;
        for (let i = 0; i < a.length; i++) {
          expect(bits[i] & 0xffff).toBe(0);
          maxRel = Math.max(maxRel, Math.abs(a[i] - b[i]) / Math.abs(b[i]));
        }
        expect(maxRel).toBeLessThanOrEqual(2 ** -8);
        expect(maxRel).toBeGreaterThan(0);
      }),
    );
  });

  it("a compressed zip entry or a missing storage is refused", () => {
    const bytes = fs.readFileSync(goldenCkpt);
    const zip = ZipFile.open(goldenCkpt);
    const entry = [...zip.entries.values()].find((e) => /\/data\/0$/.test(e.name));
    zip.close();
    expect(entry).toBeDefined();
    // Rename the storage entry in its central-directory record: the pickle then names a missing storage.
    const broken = Buffer.from(bytes);
    const nameBytes = Buffer.from(entry!.name);
    const at = broken.lastIndexOf(nameBytes);
    broken[at + nameBytes.length - 1] = "9".charCodeAt(0);
    const file = path.join(tmp, "missing-storage.pth");
    fs.writeFileSync(file, broken);
    expect(() => openStateDict(file)).toThrow(/storage data\/0 is missing/);
    // Mark data.pkl's central-directory record as deflated (method 8).
    const compressed = Buffer.from(bytes);
    const pkl = Buffer.from(`${entry!.name.split("/")[0]}/data.pkl`);
    const pklAt = compressed.lastIndexOf(pkl);
    expect(compressed.readUInt32LE(pklAt - 46)).toBe(0x02014b50);
    compressed.writeUInt16LE(8, pklAt - 46 + 10);
    const file2 = path.join(tmp, "compressed.pth");
    fs.writeFileSync(file2, compressed);
    expect(() => openStateDict(file2)).toThrow(/is compressed \(method 8\)/);
  });
});

describe("safetensors", () => {
  it("rejects a header that points past the end of the file", () => {
    const src = fs.readFileSync(path.join(fixtures, "w48-mixed.safetensors"));
    const file = path.join(tmp, "short.safetensors");
    fs.writeFileSync(file, src.subarray(0, src.length - 100));
    expect(() => openStateDict(file)).toThrow(/bad data offsets \(or the file is truncated\)/);
  });

  it("rejects an unsupported dtype", () => {
    const header = Buffer.from(JSON.stringify({ x: { dtype: "F8_E4M3", shape: [2], data_offsets: [0, 2] } }));
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(header.length));
    const file = path.join(tmp, "f8.safetensors");
    fs.writeFileSync(file, Buffer.concat([len, header, Buffer.alloc(2)]));
    expect(() => openStateDict(file)).toThrow(/unsupported dtype \(F8_E4M3\)/);
  });
});
