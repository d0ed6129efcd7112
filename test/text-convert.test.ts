/**
 * convert-text / embed-text end to end: the tiny CLIP text tower of the golden data (test/fixtures/golden/
 * clip-text-tiny, made by the Alpha-CLIP reference code) in its OpenAI layout (torch.save), its Hugging
 * Face layout (safetensors) and a TorchScript archive of the same weights -> model folders -> ONNX
 * Runtime, compared with the reference's features, hidden states and zero-shot scores.
 */
import { createHash } from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import * as ort from "onnxruntime-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { isRegionVqaError } from "../src/common/errors.js";
import { encodeOnnxModel, float32ArrayToFloat16, OnnxGraphBuilder } from "../src/common/onnx/index.js";
import { maxAbsDiff, type Tensor } from "../src/common/tensor.js";
import {
  appendClipTextNodes,
  ClipTextEncoder,
  convertTextCheckpoint,
  inspectClipTextStateDict,
  l2NormalizeRows,
  parseTokenIdFile,
  softmaxRows,
  writeClipTextModelFolder,
  zeroShotLogits,
  type ClipTextManifest,
} from "../src/text/index.js";
import {
  inMemoryStateDict,
  openStateDict,
  renameKeys,
  type StateDict,
} from "../src/vision/checkpoint/index.js";
import { runCli } from "./support/run-cli.js";
import { goldenAlphaClip, goldenDir } from "./support/tiny-models.js";
import {
  writeTorchScriptArchive,
  type ArchiveTensor,
  type PlainAttribute,
} from "./support/torchscript-archive.js";

const golden = path.join(goldenDir, "clip-text-tiny");
const openaiCkpt = path.join(golden, "tiny_clip_text.pt");
const hfCkpt = path.join(golden, "tiny_clip_text_hf.safetensors");
const w48 = path.resolve(goldenDir, "../alpha-clip-w48");
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "convert-text-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const goldenManifest = JSON.parse(fs.readFileSync(path.join(golden, "manifest.json"), "utf8")) as {
  config: { heads: number; embed_dim: number; width: number };
  prompts: Array<{ text: string; ids: number[]; eot_index: number }>;
  zeroshot_cases: string[];
};
const HEADS = goldenManifest.config.heads; // not stored in the checkpoints
const P = goldenManifest.prompts.length;
const D = goldenManifest.config.embed_dim;
const W = goldenManifest.config.width;

function readF32(file: string): Float32Array {
  const b = fs.readFileSync(file);
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
}
const goldenF32 = (name: string) => readF32(path.join(golden, `${name}.bin`));
function promptIds(): Int32Array {
  const b = fs.readFileSync(path.join(golden, "prompt_token_ids.bin"));
  return new Int32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
}
const sha256 = (file: string) => createHash("sha256").update(fs.readFileSync(file)).digest("hex");

async function expectCode(p: Promise<unknown> | (() => unknown), code: string, message?: RegExp) {
  let err: unknown;
  try {
    await (typeof p === "function" ? p() : p);
  } catch (e) {
    err = e;
  }
  expect(isRegionVqaError(err), String(err)).toBe(true);
  expect((err as { code: string }).code).toBe(code);
  if (message) expect((err as Error).message).toMatch(message);
}

async function encodeFolder(dir: string, ids: Int32Array | number[][], options: { maxBatch?: number } = {}) {
  const encoder = await ClipTextEncoder.load(dir, { device: "cpu", threads: 1, ...options });
  try {
    const input = Array.isArray(ids) ? ids : { data: ids, shape: [ids.length / 77, 77] };
    return await encoder.encodeDetailed(input, { lastHiddenState: true });
  } finally {
    await encoder.dispose();
  }
}

const folders = {
  openai: path.join(tmp, "openai-fp32"),
  hf: path.join(tmp, "hf-fp32"),
  fp16: path.join(tmp, "openai-fp16"),
  torchscript: path.join(tmp, "torchscript-fp32"),
};
const manifests: Record<string, ClipTextManifest> = {};

beforeAll(async () => {
  manifests.openai = await convertTextCheckpoint({
    checkpoint: openaiCkpt,
    out: folders.openai,
    heads: HEADS,
  });
  manifests.hf = await convertTextCheckpoint({ checkpoint: hfCkpt, out: folders.hf, heads: HEADS });
  manifests.fp16 = await convertTextCheckpoint({
    checkpoint: openaiCkpt,
    out: folders.fp16,
    heads: HEADS,
    precision: "fp16",
  });
});

describe("convert-text: model folders", () => {
  it("writes a clip-text manifest with the configuration, the files' sha256 and the source", () => {
    const m = manifests.openai;
    expect(m).toMatchObject({
      kind: "clip-text",
      formatVersion: 1,
      name: "openai-fp32",
      precision: "fp32",
      config: {
        width: 64,
        layers: 2,
        heads: 4,
        mlpWidth: 256,
        contextLength: 77,
        vocabSize: 49408,
        embedDim: 32,
        zeroShotScale: 100,
        zeroShotTemplate: "a photo of a {label}.",
        sourceLayout: "openai",
        inputs: { inputIds: "input_ids" },
        outputs: ["text_embeds", "last_hidden_state"],
      },
      source: { path: openaiCkpt, sha256: sha256(openaiCkpt), format: "pytorch-zip" },
    });
    // logit_scale is stored as float16 4.605; the manifest holds its exp.
    expect(m.config.logitScale).toBeCloseTo(Math.exp(4.60546875), 9);
    expect(manifests.hf.config.sourceLayout).toBe("huggingface");
    expect(manifests.hf.source?.format).toBe("safetensors");
    const onDisk = JSON.parse(fs.readFileSync(path.join(folders.openai, "manifest.json"), "utf8"));
    expect(onDisk.config).toEqual(m.config);
    for (const f of m.files) {
      expect(sha256(path.join(folders.openai, f.path)), f.path).toBe(f.sha256);
      expect(fs.statSync(path.join(folders.openai, f.path)).size).toBe(f.bytes);
    }
    expect(m.files.map((f) => f.role).sort()).toEqual(["onnx", "onnx-data"]);
    // The converter ran the model against its float64 forward pass before writing the manifest.
    const check = m.selfCheck as { maxAbsDiff: number; tolerance: number; prompts: number[][] };
    expect(check.maxAbsDiff).toBeLessThan(1e-5);
    expect(check.prompts[1]).toEqual([49406, 49407]);
  });

  it("the two layouts give the same ONNX model, byte for byte", () => {
    for (const f of manifests.openai.files) {
      expect(manifests.hf.files.find((g) => g.path === f.path)?.sha256, f.path).toBe(f.sha256);
    }
  });

  it("fp16 stores the matrices in half precision", () => {
    const data = (m: ClipTextManifest) => m.files.find((f) => f.role === "onnx-data")!.bytes;
    // The token table dominates: 49408 x 64 x 4 bytes in fp32, half of that in fp16.
    expect(data(manifests.fp16)).toBeLessThan(data(manifests.openai) * 0.52);
    expect(manifests.fp16.precision).toBe("fp16");
  });
});

describe("convert-text: features against the reference", () => {
  // Tolerances (max abs): the golden README's suggestion for a float32 port.
  const TOL = { features: 1e-5, hidden: 1e-4, zeroShot: 1e-3 };

  for (const [layout, dir] of [
    ["OpenAI torch.save", "openai"],
    ["Hugging Face safetensors", "hf"],
  ] as const) {
    it(`${layout}: text_features, normalised features and ln_final match the golden`, async () => {
      const out = await encodeFolder(folders[dir], promptIds());
      expect(out.textEmbeds.shape).toEqual([P, D]);
      const features = maxAbsDiff(out.textEmbeds.data, goldenF32("text_features"));
      const normalized = maxAbsDiff(
        l2NormalizeRows(out.textEmbeds).data,
        goldenF32("text_features_normalized"),
      );
      const lnFinal = maxAbsDiff(out.lastHiddenState!.data, goldenF32("ln_final"));
      // measured: 1.2e-6, 2.2e-7, 1.9e-6
      expect(features).toBeLessThan(TOL.features);
      expect(normalized).toBeLessThan(TOL.features);
      expect(lnFinal).toBeLessThan(TOL.hidden);
    });
  }

  it("fp16 weights stay within 1e-4 (the golden weights are fp16-exact: measured 1.1e-6)", async () => {
    const out = await encodeFolder(folders.fp16, promptIds());
    expect(maxAbsDiff(out.textEmbeds.data, goldenF32("text_features"))).toBeLessThan(1e-4);
  });

  it("fp16 of weights that are not fp16-exact stays within 1e-2 of fp32 (measured 1.2e-3)", async () => {
    // The golden weights perturbed by a relative 1e-3, so that rounding them to fp16 loses something.
    const opened = openStateDict(openaiCkpt);
    const tensors: Record<string, { shape: number[]; data: Float32Array }> = {};
    try {
      let seed = 1;
      const noise = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31 - 0.5) * 2e-3;
      for (const k of opened.keys()) {
        tensors[k] = { shape: opened.info(k).shape, data: opened.read(k).map((v) => v * (1 + noise())) };
      }
    } finally {
      opened.close();
    }
    const { stateDict, config } = inspectClipTextStateDict(inMemoryStateDict(tensors), { heads: HEADS });
    const out: Record<string, Tensor> = {};
    for (const precision of ["fp32", "fp16"] as const) {
      const dir = path.join(tmp, `perturbed-${precision}`);
      await writeClipTextModelFolder(stateDict, config, dir, { precision });
      out[precision] = (await encodeFolder(dir, promptIds())).textEmbeds;
    }
    const diff = maxAbsDiff(out.fp16.data, out.fp32.data);
    expect(diff).toBeGreaterThan(1e-5); // the fp16 file really holds rounded weights
    expect(diff).toBeLessThan(1e-2);
  });

  it("pools the first EOT: the literal <|endoftext|> prompt and the 77-token prompts", async () => {
    const ids = promptIds();
    const lastHidden = (await encodeFolder(folders.openai, ids)).lastHiddenState!;
    const eotBytes = fs.readFileSync(path.join(golden, "eot_index.bin"));
    const eot = new Int32Array(
      eotBytes.buffer.slice(eotBytes.byteOffset, eotBytes.byteOffset + eotBytes.byteLength),
    );
    const pooledGolden = goldenF32("pooled");
    for (let p = 0; p < P; p++) {
      expect(goldenManifest.prompts[p].eot_index).toBe(eot[p]);
      const row = lastHidden.data.subarray((p * 77 + eot[p]) * W, (p * 77 + eot[p] + 1) * W);
      expect(maxAbsDiff(row, pooledGolden.subarray(p * W, (p + 1) * W))).toBeLessThan(TOL.hidden);
    }
    expect([...eot]).toContain(5); // "a photo of a <|endoftext|> cat." pools position 5, not 8
    expect([...eot]).toContain(76);
  });

  it("encode cuts each run after the batch's last EOT, batches rows, and ignores the padding value", async () => {
    const ids = promptIds();
    const full = (await encodeFolder(folders.openai, ids)).textEmbeds; // lastHiddenState: all 77 positions
    const encoder = await ClipTextEncoder.load(folders.openai, { device: "cpu", threads: 1, maxBatch: 3 });
    try {
      const cut = await encoder.encode({ data: ids, shape: [P, 77] });
      expect(maxAbsDiff(cut.data, full.data)).toBeLessThan(1e-6);
      // Hugging Face pads with 49407 instead of 0: the pooled rows do not change.
      const rows = goldenManifest.prompts.map((p) => p.ids.map((v, i) => (i > p.eot_index ? 49407 : v)));
      const padded = await encoder.encode(rows);
      expect(maxAbsDiff(padded.data, full.data)).toBeLessThan(1e-6);
      const one = await encoder.encode([goldenManifest.prompts[4].ids]);
      expect(maxAbsDiff(one.data, full.data.subarray(4 * D, 5 * D))).toBeLessThan(1e-6);
    } finally {
      await encoder.dispose();
    }
  });

  it("embeddings and every block's hidden state match the golden (graph with all hidden states)", async () => {
    const opened = openStateDict(openaiCkpt);
    let model: Uint8Array;
    try {
      const { stateDict, config } = inspectClipTextStateDict(opened, { heads: HEADS });
      const g = new OnnxGraphBuilder();
      const values = appendClipTextNodes(g, stateDict, config);
      values.hiddenStates.forEach((v, i) => g.output(`hidden_${i}`, "float32", ["batch", "sequence", W], v));
      model = encodeOnnxModel(g.toModel());
    } finally {
      opened.close();
    }
    const session = await ort.InferenceSession.create(model, { intraOpNumThreads: 1, interOpNumThreads: 1 });
    try {
      const ids = BigInt64Array.from(promptIds(), (v) => BigInt(v));
      const out = await session.run({ input_ids: new ort.Tensor("int64", ids, [P, 77]) });
      const diffs = ["embeddings", "hidden_1", "hidden_2"].map((name, i) =>
        maxAbsDiff(out[`hidden_${i}`].data as Float32Array, goldenF32(name)),
      );
      for (const d of diffs) expect(d).toBeLessThan(TOL.hidden); // measured: 0, 1.7e-6, 2.1e-6
    } finally {
      await session.release();
    }
  });

  it("zero-shot logits and probabilities against the golden Alpha-CLIP image embeddings", async () => {
    const text = (await encodeFolder(folders.hf, promptIds())).textEmbeds;
    const cases = goldenManifest.zeroshot_cases;
    const image: Tensor = { data: new Float32Array(cases.length * D), shape: [cases.length, D] };
    cases.forEach((c, i) =>
      image.data.set(readF32(path.join(goldenAlphaClip, `${c}_image_embed.bin`)), i * D),
    );
    const logits = zeroShotLogits(image, text);
    expect(logits.shape).toEqual([6, P]);
    // measured: 1.8e-5 and 2.4e-6
    expect(maxAbsDiff(logits.data, goldenF32("zeroshot_logits"))).toBeLessThan(TOL.zeroShot);
    expect(maxAbsDiff(softmaxRows(logits).data, goldenF32("zeroshot_probs"))).toBeLessThan(TOL.zeroShot);
  });
});

/** The golden OpenAI-layout tensors as float16 archive tensors (the values are fp16-exact). */
function goldenTensors(): Map<string, ArchiveTensor> {
  const sd = openStateDict(openaiCkpt);
  try {
    const out = new Map<string, ArchiveTensor>();
    for (const key of sd.keys().sort()) {
      const half = float32ArrayToFloat16(sd.read(key));
      out.set(key, { dtype: "F16", shape: sd.info(key).shape, bytes: new Uint8Array(half.buffer) });
    }
    return out;
  } finally {
    sd.close();
  }
}

describe("convert-text: TorchScript archives (OpenAI's .pt format)", () => {
  it("reads the module tree's parameters and converts to the same model", async () => {
    const tensors = goldenTensors();
    // A whole CLIP: a visual tower to ignore, and each block's attn_mask attribute (a plain tensor).
    const zeros = (n: number) => new Uint8Array(n * 2);
    tensors.set("visual.proj", { dtype: "F16", shape: [4, 4], bytes: zeros(16) });
    tensors.set("visual.conv1.weight", { dtype: "F16", shape: [4, 3, 2, 2], bytes: zeros(48) });
    const mask = new Float32Array(77 * 77).map((_, i) => (i % 77 > Math.floor(i / 77) ? -Infinity : 0));
    for (const b of [0, 1]) {
      tensors.set(`transformer.resblocks.${b}.attn_mask`, {
        dtype: "F32",
        shape: [77, 77],
        bytes: new Uint8Array(mask.buffer.slice(0)),
      });
    }
    const file = path.join(tmp, "ViT-tiny.pt");
    writeTorchScriptArchive(file, {
      tensors,
      top: "ViT-tiny",
      classOf: (p) =>
        p === ""
          ? "__torch__.clip.model.CLIP"
          : p.endsWith(".attn")
            ? "__torch__.torch.nn.modules.activation.MultiheadAttention"
            : "__torch__.torch.nn.modules.module.Module",
      attributes: (p): Record<string, PlainAttribute> =>
        p.endsWith(".attn")
          ? {
              training: false,
              num_heads: HEADS,
              dropout: { float: 0 },
              bias_k: null,
              _qkv_same_embed_dim: true,
            }
          : { training: false },
      shareStorage: [["ln_final.weight", "ln_final.bias"]],
    });
    const sd = openStateDict(file);
    const original = openStateDict(openaiCkpt);
    try {
      expect(sd.source.format).toBe("torchscript");
      expect(sd.keys()).toContain("transformer.resblocks.1.attn.in_proj_weight");
      expect(sd.keys()).toContain("transformer.resblocks.0.attn_mask");
      // ln_final.bias sits after ln_final.weight in one shared storage.
      for (const key of ["ln_final.weight", "ln_final.bias"]) {
        expect(maxAbsDiff(sd.read(key), original.read(key)), key).toBe(0);
      }
    } finally {
      sd.close();
      original.close();
    }
    const manifest = await convertTextCheckpoint({
      checkpoint: file,
      out: folders.torchscript,
      heads: HEADS,
    });
    expect(manifest.source?.format).toBe("torchscript");
    for (const f of manifests.openai.files) {
      expect(manifest.files.find((g) => g.path === f.path)?.sha256, f.path).toBe(f.sha256);
    }
    const out = await encodeFolder(folders.torchscript, promptIds());
    expect(maxAbsDiff(out.textEmbeds.data, goldenF32("text_features"))).toBeLessThan(1e-5);
  });
});

describe("convert-text: bad checkpoints and inputs", () => {
  const convert = (checkpoint: string, heads = HEADS) =>
    convertTextCheckpoint({ checkpoint, out: path.join(tmp, "bad"), heads });

  it("refuses a visual-only (Alpha-CLIP) checkpoint, other keys, a missing file and a non-checkpoint", async () => {
    await expectCode(
      convert(path.join(goldenAlphaClip, "tiny_alphaclip_visual.pth")),
      "checkpoint_invalid",
      /not a CLIP text encoder.*visual encoder/,
    );
    await expectCode(convert(path.join(w48, "other-keys.pth")), "checkpoint_invalid", /encoder\.weight/);
    await expectCode(convert(path.join(tmp, "nope.pt")), "checkpoint_invalid", /cannot open checkpoint/);
    const text = path.join(tmp, "text.pt");
    fs.writeFileSync(text, "not a checkpoint at all");
    await expectCode(convert(text), "checkpoint_invalid");
    expect(fs.existsSync(path.join(tmp, "bad", "manifest.json"))).toBe(false);
  });

  it("refuses truncated checkpoints of both formats", async () => {
    for (const ckpt of [openaiCkpt, hfCkpt]) {
      const file = path.join(tmp, `truncated-${path.basename(ckpt)}`);
      fs.writeFileSync(file, fs.readFileSync(ckpt).subarray(0, 3_000_000));
      await expectCode(convert(file), "checkpoint_invalid");
    }
  });

  it("names a missing or misshapen tensor", async () => {
    // A state dict with a text tower's names but most tensors missing (tools/make-test-checkpoint.py).
    await expectCode(
      convertTextCheckpoint({ checkpoint: path.join(w48, "clip-text.pth"), out: path.join(tmp, "bad") }),
      "invalid_request",
      /width 8 .*--heads/,
    );
    await expectCode(
      convert(path.join(w48, "clip-text.pth"), 1),
      "checkpoint_invalid",
      /"transformer\.resblocks\.0\./,
    );
    const withKey = (file: string, drop: string) => {
      const sd = openStateDict(file);
      return renameKeys(sd, (k) => (k === drop ? undefined : k));
    };
    const cases: Array<[string, string, RegExp]> = [
      [openaiCkpt, "transformer.resblocks.1.mlp.c_fc.bias", /"transformer\.resblocks\.1\.mlp\.c_fc\.bias"/],
      [openaiCkpt, "text_projection", /"text_projection"/],
      [hfCkpt, "text_model.encoder.layers.1.self_attn.k_proj.weight", /k_proj\.weight/],
      [hfCkpt, "text_projection.weight", /"text_projection"/],
    ];
    for (const [file, drop, message] of cases) {
      const sd = withKey(file, drop);
      try {
        await expectCode(() => inspectClipTextStateDict(sd, { heads: HEADS }), "checkpoint_invalid", message);
      } finally {
        sd.close();
      }
    }
    const opened = openStateDict(openaiCkpt);
    try {
      const tensors: Record<string, { shape: number[]; data: Float32Array }> = {};
      for (const k of opened.keys()) tensors[k] = { shape: opened.info(k).shape, data: opened.read(k) };
      tensors["transformer.resblocks.0.attn.in_proj_weight"] = {
        shape: [64, 64],
        data: new Float32Array(64 * 64),
      };
      const sd: StateDict = inMemoryStateDict(tensors);
      await expectCode(
        () => inspectClipTextStateDict(sd, { heads: HEADS }),
        "checkpoint_invalid",
        /"transformer\.resblocks\.0\.attn\.in_proj\.weight" has shape \[64, 64\], expected \[192, 64\]/,
      );
      await expectCode(() => inspectClipTextStateDict(sd, { heads: 5 }), "invalid_request", /heads 5/);
    } finally {
      opened.close();
    }
  });

  it("the encoder refuses ids of the wrong shape or outside the vocabulary, and other model kinds", async () => {
    const encoder = await ClipTextEncoder.load(folders.openai, { device: "cpu", threads: 1 });
    try {
      await expectCode(encoder.encode([[49406, 49407]]), "invalid_request", /77 per row/);
      const row = [...goldenManifest.prompts[0].ids];
      row[3] = 49408;
      await expectCode(encoder.encode([row]), "invalid_request", /outside the vocabulary/);
      await expectCode(encoder.encode({ data: new Int32Array(76), shape: [1, 76] }), "invalid_request");
      await expectCode(encoder.encode([]), "invalid_request");
    } finally {
      await encoder.dispose();
    }
    const other = path.join(tmp, "other-kind");
    fs.mkdirSync(other, { recursive: true });
    fs.writeFileSync(
      path.join(other, "manifest.json"),
      JSON.stringify({ kind: "alpha-clip-vision", config: {} }),
    );
    await expectCode(ClipTextEncoder.load(other), "model_invalid", /not a CLIP text model/);
    await expectCode(ClipTextEncoder.load(path.join(tmp, "absent")), "model_not_found");
  });
});

describe("token id files", () => {
  it("parses int32 and int64 rows and refuses sizes that are not whole rows", async () => {
    const ids = promptIds();
    const b32 = new Uint8Array(ids.buffer.slice(0));
    const t32 = parseTokenIdFile(b32, "int32", 77);
    expect(t32.shape).toEqual([P, 77]);
    expect(Array.from(t32.data as ArrayLike<number>, Number)).toEqual([...ids]);
    const b64 = new Uint8Array(BigInt64Array.from(ids, (v) => BigInt(v)).buffer);
    const t64 = parseTokenIdFile(b64, "int64", 77);
    expect(t64.shape).toEqual([P, 77]);
    expect(Array.from(t64.data as ArrayLike<bigint>, Number)).toEqual([...ids]);
    await expectCode(
      () => parseTokenIdFile(new Uint8Array(77 * 4 + 4), "int32", 77),
      "invalid_request",
      /312 bytes is not a whole number of int32 rows of 77/,
    );
    await expectCode(() => parseTokenIdFile(new Uint8Array(0), "int64", 77), "invalid_request");
  });
});

describe("region-vqa convert-text / embed-text (CLI, child processes)", () => {
  it("convert-text writes a folder, refuses to overwrite without --force, and reports bad checkpoints", async () => {
    const out = path.join(tmp, "cli-model");
    const args = ["convert-text", "--checkpoint", hfCkpt, "--out", out, "--heads", "4", "--json"];
    const first = await runCli(args);
    expect(first.code, first.stderr).toBe(0);
    const manifest = JSON.parse(first.stdout) as ClipTextManifest;
    expect(manifest).toMatchObject({ kind: "clip-text", config: { heads: 4, sourceLayout: "huggingface" } });
    expect(first.stderr).toMatch(/self-check: max \|onnx - float64 reference\|/);
    const again = await runCli(args);
    expect(again.code).toBe(2);
    expect(again.stderr).toMatch(/--force to overwrite \[invalid_request\]/);
    const bad = await runCli([
      "convert-text",
      "--checkpoint",
      path.join(goldenAlphaClip, "tiny_alphaclip_visual.pth"),
      "--out",
      path.join(tmp, "cli-bad"),
    ]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/\[checkpoint_invalid\]/);
  });

  it("embed-text --ids / --text writes the features as raw float32 [N, D]", async () => {
    const out = path.join(tmp, "features.bin");
    const idsFile = path.join(golden, "prompt_token_ids.bin");
    const r = await runCli([
      "embed-text",
      "--model",
      folders.openai,
      "--ids",
      idsFile,
      "--out",
      out,
      "--device",
      "cpu",
      "--threads",
      "1",
    ]);
    expect(r.code, r.stderr).toBe(0);
    const summary = JSON.parse(r.stdout.trim().split("\n").at(-1)!);
    expect(summary).toMatchObject({ shape: [P, D], dtype: "float32", normalized: false, provider: "cpu" });
    expect(fs.statSync(out).size).toBe(P * D * 4);
    expect(maxAbsDiff(readF32(out), goldenF32("text_features"))).toBeLessThan(1e-5);

    // Texts through the CLIP tokenizer: the golden prompts' own texts give the golden features. The
    // 87-token prompt needs --truncate (Alpha-CLIP's tokenize default).
    const rows = [0, 4, 5, 6, 7, 9];
    const t = await runCli([
      "embed-text",
      "--model",
      folders.openai,
      ...rows.flatMap((i) => ["--text", goldenManifest.prompts[i].text]),
      "--truncate",
      "--out",
      out,
      "--device",
      "cpu",
    ]);
    expect(t.code, t.stderr).toBe(0);
    expect(JSON.parse(t.stdout.trim().split("\n").at(-1)!).shape).toEqual([rows.length, D]);
    const expected = goldenF32("text_features");
    const got = readF32(out);
    rows.forEach((row, i) => {
      const diff = maxAbsDiff(got.subarray(i * D, (i + 1) * D), expected.subarray(row * D, (row + 1) * D));
      expect(diff, goldenManifest.prompts[row].text).toBeLessThan(1e-5);
    });

    // int64 ids and --normalize.
    const ids64 = path.join(tmp, "ids64.bin");
    fs.writeFileSync(ids64, Buffer.from(BigInt64Array.from(promptIds(), (v) => BigInt(v)).buffer));
    const n = await runCli([
      "embed-text",
      "--model",
      folders.openai,
      "--ids",
      ids64,
      "--ids-dtype",
      "int64",
      "--normalize",
      "--out",
      out,
      "--device",
      "cpu",
    ]);
    expect(n.code, n.stderr).toBe(0);
    expect(maxAbsDiff(readF32(out), goldenF32("text_features_normalized"))).toBeLessThan(1e-5);
  });
});
