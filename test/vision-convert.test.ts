/**
 * convert-vision end to end: checkpoints -> model folder -> real ONNX Runtime sessions, compared with
 * the golden outputs of the Alpha-CLIP reference code (tiny model) and with a float64 PyTorch
 * re-statement of the forward pass (w48 fixtures, made by tools/make-test-checkpoint.py).
 */
import { createHash } from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import * as ort from "onnxruntime-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { isRegionVqaError } from "../src/common/errors.js";
import { maxAbsDiff } from "../src/common/tensor.js";
import { main as cliMain } from "../src/cli/index.js";
import {
  inMemoryStateDict,
  openStateDict,
  renameKeys,
  type StateDict,
} from "../src/vision/checkpoint/index.js";
import {
  convertVisionCheckpoint,
  inspectAlphaClipStateDict,
  writeAlphaClipModelFolder,
} from "../src/vision/convert/index.js";

const repoRoot = path.resolve(import.meta.dirname, "..");
const golden = path.resolve(repoRoot, "test/fixtures/golden/alpha-clip-tiny");
const goldenCkpt = path.join(golden, "tiny_alphaclip_visual.pth");
const fixtures = path.join(repoRoot, "test/fixtures/alpha-clip-w48");
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "convert-vision-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const sessionOptions: ort.InferenceSession.SessionOptions = {
  intraOpNumThreads: 1,
  interOpNumThreads: 1,
  extra: { session: { intra_op: { allow_spinning: "0" } } },
};

function readF32(file: string): Float32Array {
  const b = fs.readFileSync(file);
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
}

async function run(folder: string, image: Float32Array, alpha: Float32Array, batch: number, res: number) {
  const session = await ort.InferenceSession.create(path.join(folder, "model.onnx"), sessionOptions);
  try {
    const out = await session.run({
      image: new ort.Tensor("float32", image, [batch, 3, res, res]),
      alpha: new ort.Tensor("float32", alpha, [batch, 1, res, res]),
    });
    return {
      llava: out.llava_features.data as Float32Array,
      llavaDims: out.llava_features.dims,
      embed: out.image_embed.data as Float32Array,
      embedDims: out.image_embed.dims,
    };
  } finally {
    await session.release();
  }
}

async function expectCheckpointError(action: () => unknown, code: string, message: RegExp) {
  let caught: unknown;
  try {
    await action();
  } catch (err) {
    caught = err;
  }
  expect(isRegionVqaError(caught), `expected a RegionVqaError, got ${String(caught)}`).toBe(true);
  expect((caught as { code: string }).code).toBe(code);
  expect((caught as Error).message).toMatch(message);
}

const sha256 = (file: string) => createHash("sha256").update(fs.readFileSync(file)).digest("hex");
const CASES = ["mask", "ones", "zeros"] as const;

describe("golden tiny Alpha-CLIP (reference implementation outputs)", () => {
  const pixels = readF32(path.join(golden, "llava_pixel_values.bin"));
  const measured: Record<string, number> = {};

  for (const precision of ["fp32", "fp16"] as const) {
    // fp16 weights (values rounded to 11 significant bits) measured at ~1.6e-3 max abs on features of
    // magnitude ~3; 5e-3 leaves margin while still catching a wrong weight layout (errors ~1).
    const tolerance = precision === "fp32" ? 1e-4 : 5e-3;
    it(`converts and matches llava_features / image_embed (${precision}, tolerance ${tolerance})`, async () => {
      const out = path.join(tmp, `golden-${precision}`);
      const started = Date.now();
      const manifest = await convertVisionCheckpoint({ checkpoint: goldenCkpt, out, heads: 4, precision });
      measured[`convert_ms_${precision}`] = Date.now() - started;

      expect(manifest.kind).toBe("alpha-clip-vision");
      expect(manifest.formatVersion).toBe(1);
      expect(manifest.precision).toBe(precision);
      expect(manifest.config).toMatchObject({
        width: 64,
        layers: 3,
        heads: 4,
        patchSize: 14,
        imageSize: 84,
        gridSize: 6,
        outputDim: 32,
        llavaFeatureLayer: 2,
      });
      const onDisk = JSON.parse(fs.readFileSync(path.join(out, "manifest.json"), "utf8"));
      expect(onDisk).toEqual(manifest);
      expect(manifest.files.map((f) => [f.path, f.role])).toEqual([
        ["model.onnx", "onnx"],
        ["model.onnx.data", "onnx-data"],
      ]);
      for (const f of manifest.files) {
        expect(fs.statSync(path.join(out, f.path)).size).toBe(f.bytes);
        expect(sha256(path.join(out, f.path))).toBe(f.sha256);
      }
      expect(manifest.source).toMatchObject({
        path: goldenCkpt,
        bytes: fs.statSync(goldenCkpt).size,
        sha256: sha256(goldenCkpt),
        format: "pytorch-zip",
      });
      measured[`data_bytes_${precision}`] = manifest.files[1].bytes;

      for (const c of CASES) {
        const alpha = readF32(path.join(golden, `llava_${c}_alpha.bin`));
        const r = await run(out, pixels, alpha, 1, 84);
        expect(r.llavaDims).toEqual([1, 36, 64]);
        expect(r.embedDims).toEqual([1, 32]);
        const featErr = maxAbsDiff(r.llava, readF32(path.join(golden, `llava_${c}_llava_features.bin`)));
        const embedErr = maxAbsDiff(r.embed, readF32(path.join(golden, `llava_${c}_image_embed.bin`)));
        measured[`${precision}_${c}_features`] = featErr;
        measured[`${precision}_${c}_embed`] = embedErr;
        expect(featErr).toBeLessThan(tolerance);
        expect(embedErr).toBeLessThan(tolerance);
      }
    });
  }

  it("fp16 weights halve the data file", () => {
    expect(measured.data_bytes_fp16).toBeLessThan(measured.data_bytes_fp32 * 0.55);
    console.log("golden conversion measurements", JSON.stringify(measured));
  });

  it("runs a batch of all three cases at once with the same results", async () => {
    const alphas = CASES.map((c) => readF32(path.join(golden, `llava_${c}_alpha.bin`)));
    const image = new Float32Array(3 * pixels.length);
    const alpha = new Float32Array(3 * alphas[0].length);
    CASES.forEach((_, i) => {
      image.set(pixels, i * pixels.length);
      alpha.set(alphas[i], i * alphas[i].length);
    });
    const r = await run(path.join(tmp, "golden-fp32"), image, alpha, 3, 84);
    expect(r.llavaDims).toEqual([3, 36, 64]);
    CASES.forEach((c, i) => {
      const expected = readF32(path.join(golden, `llava_${c}_llava_features.bin`));
      expect(
        maxAbsDiff(r.llava.subarray(i * expected.length, (i + 1) * expected.length), expected),
      ).toBeLessThan(1e-4);
    });
  });
});

// ---- w48 fixtures: another size (width 48, 3 heads, patch 8, 64 px, output 24) and reader paths ----

interface W48Reference {
  config: { width: number; heads: number; imageSize: number; gridSize: number; outputDim: number };
  outputs: Record<string, { llava_features: string; image_embed: string }>;
}
const w48: W48Reference = JSON.parse(fs.readFileSync(path.join(fixtures, "reference.json"), "utf8"));
const b64 = (s: string) => {
  const b = Buffer.from(s, "base64");
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
};

/** The inputs tools/make-test-checkpoint.py describes in reference.json (exact integer recipe). */
function w48Inputs(): { image: Float32Array; alpha: Float32Array } {
  const R = 64;
  const image = new Float32Array(2 * 3 * R * R);
  for (let i = 0; i < image.length; i++) image[i] = (((i * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) * 4 - 2;
  const alpha = new Float32Array(2 * R * R);
  for (let y = 0; y < R; y++) {
    for (let x = 0; x < R; x++) {
      alpha[y * R + x] = x + y < R ? 1.9231 : -1.9231;
      alpha[R * R + y * R + x] = 1.9231;
    }
  }
  return { image, alpha };
}

describe("w48 checkpoints (fp32 views, fp16 module./state_dict, bf16, safetensors)", () => {
  const { image, alpha } = w48Inputs();
  const cases: Array<[file: string, weights: string]> = [
    ["w48-views.pth", "fp32"],
    ["w48-fp16-module.pth", "fp16"],
    ["w48-bf16.pth", "bf16"],
    ["w48-mixed.safetensors", "fp16"],
  ];
  for (const [file, weights] of cases) {
    it(`${file} matches the float64 reference within 1e-4`, async () => {
      const out = path.join(tmp, file);
      const manifest = await convertVisionCheckpoint({
        checkpoint: path.join(fixtures, file),
        out,
        heads: 3,
      });
      expect(manifest.config).toMatchObject({
        width: 48,
        layers: 2,
        heads: 3,
        patchSize: 8,
        imageSize: 64,
        outputDim: 24,
      });
      expect(manifest.source?.format).toBe(file.endsWith(".safetensors") ? "safetensors" : "pytorch-zip");
      const r = await run(out, image, alpha, 2, 64);
      expect(r.llavaDims).toEqual([2, 64, 48]);
      expect(r.embedDims).toEqual([2, 24]);
      const ref = w48.outputs[weights];
      expect(maxAbsDiff(r.llava, b64(ref.llava_features))).toBeLessThan(1e-4);
      expect(maxAbsDiff(r.embed, b64(ref.image_embed))).toBeLessThan(1e-4);
    });
  }

  it("fp16 ONNX from the fp32 checkpoint stays within 5e-3 of the fp32 reference", async () => {
    const out = path.join(tmp, "w48-as-fp16");
    await convertVisionCheckpoint({
      checkpoint: path.join(fixtures, "w48-views.pth"),
      out,
      heads: 3,
      precision: "fp16",
    });
    const r = await run(out, image, alpha, 2, 64);
    const err = maxAbsDiff(r.llava, b64(w48.outputs.fp32.llava_features));
    console.log("w48 fp16 llava_features max abs error", err);
    expect(err).toBeLessThan(5e-3);
    expect(err).toBeGreaterThan(0); // the weights really are rounded
  });

  it("needs --heads when width is not a multiple of 64", async () => {
    await expectCheckpointError(
      () =>
        convertVisionCheckpoint({
          checkpoint: path.join(fixtures, "w48-views.pth"),
          out: path.join(tmp, "no-heads"),
        }),
      "invalid_request",
      /width 48 .*--heads/,
    );
    await expectCheckpointError(
      () =>
        convertVisionCheckpoint({
          checkpoint: path.join(fixtures, "w48-views.pth"),
          out: path.join(tmp, "bad-heads"),
          heads: 5,
        }),
      "invalid_request",
      /heads 5 does not divide width 48/,
    );
  });

  it("plain CLIP (no conv1_alpha): warning, zero alpha conv, output independent of alpha", async () => {
    const opened = openStateDict(path.join(fixtures, "w48-views.pth"));
    try {
      const clip = renameKeys(opened, (k) => (k === "conv1_alpha.weight" ? undefined : k));
      const inspected = inspectAlphaClipStateDict(clip, { heads: 3 });
      expect(inspected.hasAlphaConv).toBe(false);
      expect(inspected.warnings.join("\n")).toMatch(/conv1_alpha\.weight.*all-zero alpha conv/);
      const out = path.join(tmp, "w48-clip");
      await writeAlphaClipModelFolder(inspected.stateDict, inspected.config, out, { zeroAlphaConv: true });
      const ref = w48.outputs.fp32_zero_alpha_conv;
      const r = await run(out, image, alpha, 2, 64);
      expect(maxAbsDiff(r.llava, b64(ref.llava_features))).toBeLessThan(1e-4);
      expect(maxAbsDiff(r.embed, b64(ref.image_embed))).toBeLessThan(1e-4);
      const flipped = await run(
        out,
        image,
        alpha.map((v) => -v),
        2,
        64,
      );
      expect(maxAbsDiff(flipped.llava, r.llava)).toBe(0);
      // and the real Alpha-CLIP reference does depend on alpha
      expect(maxAbsDiff(b64(w48.outputs.fp32.llava_features), b64(ref.llava_features))).toBeGreaterThan(1e-2);
    } finally {
      opened.close();
    }
  });

  it("a whole CLIP state dict (visual.* keys) uses its visual part", () => {
    const opened = openStateDict(path.join(fixtures, "w48-views.pth"));
    try {
      const full = renameKeys(opened, (k) => `visual.${k}`);
      const text = inMemoryStateDict({
        "transformer.resblocks.0.attn.in_proj.weight": { shape: [24, 8], data: new Float32Array(192) },
      });
      const merged: StateDict = {
        ...full,
        keys: () => [...full.keys(), ...text.keys()],
        has: (k) => full.has(k) || text.has(k),
        info: (k) => (full.has(k) ? full.info(k) : text.info(k)),
        read: (k) => (full.has(k) ? full.read(k) : text.read(k)),
      };
      const inspected = inspectAlphaClipStateDict(merged, { heads: 3 });
      expect(inspected.config).toMatchObject({ width: 48, layers: 2 });
      expect(inspected.warnings.join("\n")).toMatch(/visual\.\*/);
      expect(Array.from(inspected.stateDict.read("proj"))).toEqual(Array.from(opened.read("proj")));
    } finally {
      opened.close();
    }
  });
});

describe("bad checkpoints are refused with checkpoint_invalid", () => {
  const convert = (checkpoint: string) => () =>
    convertVisionCheckpoint({ checkpoint, out: path.join(tmp, "bad-out"), heads: 4 });

  it("a text file", async () => {
    const file = path.join(tmp, "notes.pth");
    fs.writeFileSync(file, "these are not the weights you are looking for\n");
    await expectCheckpointError(
      convert(file),
      "checkpoint_invalid",
      /not a PyTorch .* or safetensors checkpoint/,
    );
  });

  it("an empty file and a missing file", async () => {
    const file = path.join(tmp, "empty.pth");
    fs.writeFileSync(file, "");
    await expectCheckpointError(convert(file), "checkpoint_invalid", /not a PyTorch/);
    await expectCheckpointError(
      convert(path.join(tmp, "nope.pth")),
      "checkpoint_invalid",
      /cannot open checkpoint/,
    );
  });

  it("a truncated checkpoint", async () => {
    const bytes = fs.readFileSync(goldenCkpt);
    for (const keep of [0.5, 0.99]) {
      const file = path.join(tmp, `truncated-${keep}.pth`);
      fs.writeFileSync(file, bytes.subarray(0, Math.floor(bytes.length * keep)));
      await expectCheckpointError(convert(file), "checkpoint_invalid", /truncated|not a zip/);
    }
  });

  it("a zip checkpoint with other keys", async () => {
    await expectCheckpointError(
      convert(path.join(fixtures, "other-keys.pth")),
      "checkpoint_invalid",
      /"conv1\.weight" is missing.*encoder\.weight/,
    );
  });

  it("a CLIP text-encoder state dict", async () => {
    await expectCheckpointError(
      convert(path.join(fixtures, "clip-text.pth")),
      "checkpoint_invalid",
      /conv1\.weight.*CLIP text encoder/,
    );
  });

  it("a missing tensor is named", async () => {
    const opened = openStateDict(goldenCkpt);
    try {
      for (const key of [
        "transformer.resblocks.1.mlp.c_fc.bias",
        "ln_post.weight",
        "proj",
        "class_embedding",
      ]) {
        const sd = renameKeys(opened, (k) => (k === key ? undefined : k));
        await expectCheckpointError(
          () => inspectAlphaClipStateDict(sd, { heads: 4 }),
          "checkpoint_invalid",
          new RegExp(`"${key.replace(/\./g, "\\.")}"`),
        );
      }
    } finally {
      opened.close();
    }
  });

  it("a misshapen tensor is named with both shapes", async () => {
    const opened = openStateDict(goldenCkpt);
    try {
      const tensors: Record<string, { shape: number[]; data: Float32Array }> = {};
      for (const k of opened.keys()) tensors[k] = { shape: opened.info(k).shape, data: opened.read(k) };
      tensors["transformer.resblocks.2.attn.out_proj.weight"] = {
        shape: [64, 32],
        data: new Float32Array(64 * 32),
      };
      await expectCheckpointError(
        () => inspectAlphaClipStateDict(inMemoryStateDict(tensors), { heads: 4 }),
        "checkpoint_invalid",
        /"transformer\.resblocks\.2\.attn\.out_proj\.weight" has shape \[64, 32\], expected \[64, 64\]/,
      );
      tensors["transformer.resblocks.2.attn.out_proj.weight"] = {
        shape: [64, 64],
        data: new Float32Array(64 * 64),
      };
      tensors.positional_embedding = { shape: [36, 64], data: new Float32Array(36 * 64) };
      await expectCheckpointError(
        () => inspectAlphaClipStateDict(inMemoryStateDict(tensors), { heads: 4 }),
        "checkpoint_invalid",
        /"positional_embedding" has 36 tokens/,
      );
    } finally {
      opened.close();
    }
  });
});

describe("region-vqa convert-vision (CLI)", () => {
  let out: string;
  beforeAll(() => {
    out = path.join(tmp, "cli-model");
  });

  it("writes a model folder and refuses to overwrite without --force", async () => {
    const args = [
      "node",
      "region-vqa",
      "convert-vision",
      "--checkpoint",
      goldenCkpt,
      "--out",
      out,
      "--heads",
      "4",
      "--precision",
      "fp16",
      "--name",
      "tiny",
    ];
    expect(await cliMain(args)).toBe(0);
    const manifest = JSON.parse(fs.readFileSync(path.join(out, "manifest.json"), "utf8"));
    expect(manifest).toMatchObject({ name: "tiny", precision: "fp16", config: { heads: 4 } });
    expect(await cliMain(args)).toBe(2);
    expect(await cliMain([...args, "--force"])).toBe(0);
  });

  it("exits 2 with a message for a bad checkpoint", async () => {
    expect(
      await cliMain([
        "node",
        "region-vqa",
        "convert-vision",
        "--checkpoint",
        path.join(fixtures, "clip-text.pth"),
        "--out",
        path.join(tmp, "x"),
      ]),
    ).toBe(2);
    expect(fs.existsSync(path.join(tmp, "x", "manifest.json"))).toBe(false);
  });
});
