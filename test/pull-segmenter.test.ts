/**
 * `region-vqa pull` for SAM-style segmenters, against loopback hosts serving the files under the real
 * Hugging Face URL paths: every file of the chosen variant in one folder (`.onnx_data` beside its
 * graph), a `sam-segmenter` manifest that `SamSegmenter` loads, the same size/hash checks as the other
 * models, presets that name a segmenter, and the licences that `pull` and `models` print.
 */
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readdir, readFile, rm, truncate, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { catalogueText } from "../src/cli/commands/models.js";
import { onnx, writeOnnxModel } from "../src/common/onnx/index.js";
import {
  listInstalledModels,
  pullModel,
  resolveModelOptions,
  resolveModelPreset,
  type Catalog,
  type VisionConverter,
} from "../src/models/index.js";
import {
  SAM21_TINY_SHAPED_ARCHITECTURE,
  SamSegmenter,
  buildMiniSamDecoder,
  buildMiniSamEncoder,
  randomMiniSamWeights,
  readSegmenterManifest,
  type SegmenterConfig,
} from "../src/segmenter/index.js";
import { fakeBytes, sha256Of, startFakeHost, type FakeHost } from "./support/pull-fakehost.js";
import {
  catalogWith,
  CKPT_20M,
  failure,
  HF_DIR,
  LLM_Q4,
  MMPROJ,
  OPENXLAB_DIR,
  removeTempModelsDirs,
  SAM21_DIR,
  SAM21_FP32_FILES,
  tempModelsDir,
} from "./support/pull-helpers.js";
import { runCli } from "./support/run-cli.js";

const SLIMSAM_DIR = "/Xenova/slimsam-77-uniform/resolve/main/onnx";
const SLIMSAM_FILES = ["", "_quantized", "_fp16"].flatMap((s) => [
  `vision_encoder${s}.onnx`,
  `prompt_encoder_mask_decoder${s}.onnx`,
]);

/**
 * A miniature SAM with SAM 2.1-tiny's inputs and outputs (1024 x 1024 images, 256 x 256 mask logits), as
 * onnx-community publishes such graphs: each `.onnx` keeps its weights in `<name>.onnx_data` and refers
 * to that file by this name (the project's writer would call it `<name>.onnx.data`, so the reference is
 * rewritten).
 */
async function publishedMiniSam(): Promise<Record<string, Buffer>> {
  const arch = SAM21_TINY_SHAPED_ARCHITECTURE;
  const weights = randomMiniSamWeights(arch, 7);
  const work = await mkdtemp(path.join(os.tmpdir(), "rvq-mini-sam-"));
  const out: Record<string, Buffer> = {};
  try {
    const graphs = [
      ["vision_encoder.onnx", buildMiniSamEncoder(arch, weights)],
      ["prompt_encoder_mask_decoder.onnx", buildMiniSamDecoder(arch, weights)],
    ] as const;
    for (const [name, model] of graphs) {
      const written = path.join(work, name);
      await writeOnnxModel(model, written, { externalDataThresholdBytes: 1024 });
      const proto = onnx.ModelProto.decode(await readFile(written));
      for (const t of proto.graph?.initializer ?? []) {
        for (const entry of t.externalData ?? []) if (entry.key === "location") entry.value = `${name}_data`;
      }
      out[name] = Buffer.from(onnx.ModelProto.encode(proto).finish());
      out[`${name}_data`] = await readFile(`${written}.data`);
    }
  } finally {
    await rm(work, { recursive: true, force: true });
  }
  return out;
}

/** Stands in for the Alpha-CLIP conversion (tested in pull.test.ts): a one-file vision folder. */
const fakeConverter: VisionConverter = async ({ out }) => {
  const body = fakeBytes(3000, 77);
  await mkdir(out, { recursive: true });
  await writeFile(path.join(out, "model.onnx"), body);
  return {
    kind: "alpha-clip-vision",
    formatVersion: 1,
    name: "fake",
    createdAt: "",
    config: {},
    files: [{ path: "model.onnx", bytes: body.length, sha256: sha256Of(body), role: "onnx" }],
  };
};

const readJson = async <T>(file: string): Promise<T> => JSON.parse(await readFile(file, "utf8")) as T;

describe("pull SAM segmenters from loopback hosts at the real URL paths", () => {
  let sam21: Record<string, Buffer>;
  const slimsam = Object.fromEntries(SLIMSAM_FILES.map((f, i) => [f, fakeBytes(20_000 + 1000 * i, 50 + i)]));
  const ckpt = fakeBytes(5000, 1);
  const mmproj = fakeBytes(4000, 2);
  const llm = fakeBytes(6000, 3);
  let host: FakeHost;
  let dir: string;
  let catalog: Catalog;
  let env: NodeJS.ProcessEnv;

  beforeAll(async () => {
    sam21 = await publishedMiniSam();
  });

  beforeEach(async () => {
    host = await startFakeHost({ redirectHfToCdn: true });
    for (const [name, body] of Object.entries(sam21)) host.setFile(`${SAM21_DIR}/${name}`, body);
    for (const [name, body] of Object.entries(slimsam)) host.setFile(`${SLIMSAM_DIR}/${name}`, body);
    host.setFile(`${OPENXLAB_DIR}/${CKPT_20M}`, ckpt);
    host.setFile(`${HF_DIR}/${MMPROJ}`, mmproj);
    host.setFile(`${HF_DIR}/${LLM_Q4}`, llm);
    catalog = catalogWith({
      ...Object.fromEntries(Object.entries(sam21).map(([name, body]) => [`sam2.1-tiny/${name}`, body])),
      ...Object.fromEntries(Object.entries(slimsam).map(([name, body]) => [`slimsam-77/${name}`, body])),
      [CKPT_20M]: ckpt,
      [MMPROJ]: mmproj,
      [LLM_Q4]: llm,
    });
    dir = await tempModelsDir();
    env = { REGION_VQA_BASE_URL_HF: host.baseUrl, REGION_VQA_BASE_URL_OPENXLAB: host.baseUrl };
  });
  afterEach(async () => {
    await host.close();
  });

  it("pulls sam2.1-tiny: both graphs with their .onnx_data beside them, and a manifest SamSegmenter loads", async () => {
    const result = await pullModel("sam2.1-tiny", { catalog, env, modelsDir: dir });
    const folder = path.join(dir, "sam2.1-tiny", "fp32");
    expect(result.folders).toEqual([folder]);
    expect(result.models).toEqual([{ name: "sam2.1-tiny", variant: "fp32", folder, licence: "Apache-2.0" }]);
    expect((await readdir(folder)).sort()).toEqual([...SAM21_FP32_FILES, "manifest.json"].sort());
    for (const name of SAM21_FP32_FILES)
      expect((await readFile(path.join(folder, name))).equals(sam21[name])).toBe(true);

    const manifest = await readSegmenterManifest(folder);
    expect(manifest).toMatchObject({ kind: "sam-segmenter", name: "sam2.1-tiny", licence: "Apache-2.0" });
    expect(manifest.config).toEqual({
      family: "sam2",
      imageSize: 1024,
      resize: "stretch",
      mean: [0.485, 0.456, 0.406],
      std: [0.229, 0.224, 0.225],
      maskSize: 256,
      encoder: "vision_encoder.onnx",
      decoder: "prompt_encoder_mask_decoder.onnx",
    } satisfies SegmenterConfig);
    expect(manifest.files).toEqual(
      [
        { path: "prompt_encoder_mask_decoder.onnx", role: "segmenter-decoder" },
        { path: "prompt_encoder_mask_decoder.onnx_data", role: "onnx-data" },
        { path: "vision_encoder.onnx", role: "segmenter-encoder" },
        { path: "vision_encoder.onnx_data", role: "onnx-data" },
      ].map((f) => ({ ...f, bytes: sam21[f.path].length, sha256: sha256Of(sam21[f.path]) })),
    );

    // ONNX Runtime finds each graph's weights beside it under the published name; the sizes in the
    // manifest are those of the graphs (a 1024 x 1024 input, 256 x 256 mask logits).
    const segmenter = await SamSegmenter.load(folder, { device: "cpu", threads: 1 });
    try {
      expect(segmenter.acceptsBoxes).toBe(true);
      const image = { width: 320, height: 200, data: fakeBytes(320 * 200 * 3, 9) };
      const r = await segmenter
        .segment(image, { points: [{ x: 100, y: 80, label: 1 }] })
        .catch((e: unknown) => e);
      // Random weights may find nothing; either way the decoder's masks had the manifest's size.
      if (r instanceof Error) expect((r as { code?: string }).code).toBe("segment_empty");
      else
        expect((r as { mask: { width: number; height: number } }).mask).toMatchObject({
          width: 320,
          height: 200,
        });
    } finally {
      await segmenter.dispose();
    }

    const entries = await listInstalledModels({ roots: [dir] });
    expect(entries.map((e) => [e.name, e.kind, e.detail, e.complete, e.licence])).toEqual([
      ["sam2.1-tiny/fp32", "sam-segmenter", "fp32", true, "Apache-2.0"],
    ]);

    // Again: nothing is downloaded, the manifest keeps its hashes.
    const before = host.requests.length;
    const again = await pullModel("sam2.1-tiny", { catalog, env, modelsDir: dir });
    expect(host.requests.length).toBe(before);
    expect(again.files.every((f) => f.skipped)).toBe(true);
    expect((await readSegmenterManifest(folder)).files).toEqual(manifest.files);
  });

  it("pulls the fp16 encoder with the fp32 decoder into its own folder (--variant fp16)", async () => {
    const fp16 = {
      "vision_encoder_fp16.onnx": fakeBytes(3000, 11),
      "vision_encoder_fp16.onnx_data": fakeBytes(9000, 12),
    };
    for (const [name, body] of Object.entries(fp16)) host.setFile(`${SAM21_DIR}/${name}`, body);
    const withFp16 = catalogWith({
      ...Object.fromEntries(Object.entries({ ...sam21, ...fp16 }).map(([n, b]) => [`sam2.1-tiny/${n}`, b])),
    });
    await pullModel("sam2.1-tiny", { catalog: withFp16, env, modelsDir: dir, variant: "fp16" });
    const folder = path.join(dir, "sam2.1-tiny", "fp16");
    const manifest = await readSegmenterManifest(folder);
    expect(manifest.config).toMatchObject({
      encoder: "vision_encoder_fp16.onnx",
      decoder: "prompt_encoder_mask_decoder.onnx",
    });
    expect(manifest.files.map((f) => f.path)).toEqual([
      "prompt_encoder_mask_decoder.onnx",
      "prompt_encoder_mask_decoder.onnx_data",
      "vision_encoder_fp16.onnx",
      "vision_encoder_fp16.onnx_data",
    ]);
  });

  it("pulls only the quantized pair of slimsam-77 with --variant quantized (no external data)", async () => {
    const result = await pullModel("slimsam-77", { catalog, env, modelsDir: dir, variant: "quantized" });
    const folder = path.join(dir, "slimsam-77", "quantized");
    const wanted = ["prompt_encoder_mask_decoder_quantized.onnx", "vision_encoder_quantized.onnx"];
    expect(result.files.map((f) => f.file).sort()).toEqual(wanted);
    const origin = host.requests.filter((r) => r.server === "origin").map((r) => path.basename(r.path));
    expect(origin.sort()).toEqual(wanted);
    expect((await readdir(folder)).sort()).toEqual([...wanted, "manifest.json"].sort());
    const manifest = await readSegmenterManifest(folder);
    expect(manifest.config).toMatchObject({
      family: "sam1",
      imageSize: 1024,
      resize: "longest-side",
      maskSize: 256,
      encoder: "vision_encoder_quantized.onnx",
      decoder: "prompt_encoder_mask_decoder_quantized.onnx",
    });
    expect(manifest.licence).toBe("Apache-2.0");
    expect(manifest.files.map((f) => [f.path, f.sha256])).toEqual(
      [...wanted].reverse().map((f) => [f, sha256Of(slimsam[f])]),
    );
    const unknown = await failure(pullModel("slimsam-77", { catalog, env, modelsDir: dir, variant: "int4" }));
    expect(unknown.message).toMatch(/slimsam-77 has no --variant "int4"; known: fp32, quantized, fp16/);
  });

  it("refuses a graph or weights file whose size or sha256 differs from the catalogue's, and writes no manifest", async () => {
    const badHash = structuredClone(catalog);
    const sam = badHash.models.find((m) => m.name === "sam2.1-tiny")!;
    sam.variants.fp32.files[1].sha256 = sha256Of(Buffer.from("other weights"));
    const err = await failure(pullModel("sam2.1-tiny", { catalog: badHash, env, modelsDir: dir }));
    expect(err.code).toBe("checksum_mismatch");
    const folder = path.join(dir, "sam2.1-tiny", "fp32");
    expect(existsSync(path.join(folder, "vision_encoder.onnx_data"))).toBe(false);
    expect(existsSync(path.join(folder, "vision_encoder.onnx_data.corrupt"))).toBe(true);
    expect(existsSync(path.join(folder, "manifest.json"))).toBe(false);
    const listed = await listInstalledModels({ roots: [dir] });
    expect(listed.every((e) => !e.complete)).toBe(true);

    const badSize = structuredClone(catalog);
    const slim = badSize.models.find((m) => m.name === "slimsam-77")!;
    const encoder = slim.variants.fp32.files[0];
    encoder.bytes = encoder.bytes! + 1;
    const sizeErr = await failure(pullModel("slimsam-77", { catalog: badSize, env, modelsDir: dir }));
    expect(sizeErr.code).toBe("checksum_mismatch");
    expect(sizeErr.message).toMatch(/offers \d+ bytes but \d+ are expected/);
    expect(existsSync(path.join(dir, "slimsam-77", "fp32", "manifest.json"))).toBe(false);
  });

  it("resumes an interrupted .onnx_data download and, with verify, re-fetches a file whose bytes changed", async () => {
    const data = `${SAM21_DIR}/vision_encoder.onnx_data`;
    const half = Math.floor(sam21["vision_encoder.onnx_data"].length / 2);
    host.misbehave(data, { kind: "drop", afterBytes: half });
    const folder = path.join(dir, "sam2.1-tiny", "fp32");
    const common = { catalog, env, modelsDir: dir, retries: 0 };
    const err = await failure(pullModel("sam2.1-tiny", common));
    expect(err.code).toBe("download_failed");
    expect(existsSync(path.join(folder, "vision_encoder.onnx_data.partial"))).toBe(true);
    expect(existsSync(path.join(folder, "manifest.json"))).toBe(false);

    const resumed = await pullModel("sam2.1-tiny", common);
    expect(resumed.files.find((f) => f.file === "vision_encoder.onnx_data")?.resumedFrom).toBe(half);
    expect(host.requests.filter((r) => r.server === "cdn").at(-1)?.range).toBe(`bytes=${half}-`);
    expect(
      (await readFile(path.join(folder, "vision_encoder.onnx_data"))).equals(
        sam21["vision_encoder.onnx_data"],
      ),
    ).toBe(true);

    // Same size, other bytes: only a re-hash (--verify) notices; the file is set aside and fetched again.
    const changed = Buffer.from(sam21["prompt_encoder_mask_decoder.onnx"]);
    changed[100] ^= 0xff;
    await writeFile(path.join(folder, "prompt_encoder_mask_decoder.onnx"), changed);
    const verified = await pullModel("sam2.1-tiny", { ...common, verify: true });
    expect(verified.files.filter((f) => !f.skipped).map((f) => f.file)).toEqual([
      "prompt_encoder_mask_decoder.onnx",
    ]);
    expect(existsSync(path.join(folder, "prompt_encoder_mask_decoder.onnx.corrupt"))).toBe(true);
    const check = await listInstalledModels({ roots: [dir], verifyHashes: true });
    expect(check.find((e) => e.name === "sam2.1-tiny/fp32")?.complete).toBe(true);
  });

  it("pulls the preset's segmenter with it; the preset resolves to it and serve's options carry it", async () => {
    const common = { catalog, env, modelsDir: dir, convertVision: fakeConverter };
    // Without it (--no-segmenter): the preset resolves without a segmenter.
    const without = await pullModel("alpha-llava-7b", { ...common, segmenter: false });
    expect(without.preset?.segmenterDir).toBeUndefined();
    expect(without.models.map((m) => [m.name, m.licence])).toEqual([
      ["alpha-clip-l14-336", "Apache-2.0"],
      ["llava-v1.5-7b", "Llama 2 Community License"],
    ]);
    expect(
      (await resolveModelPreset("alpha-llava-7b", { roots: [dir], catalog })).segmenterDir,
    ).toBeUndefined();

    // A segmenter pulled on its own afterwards is found for the preset.
    await pullModel("sam2.1-tiny", common);
    const folder = path.join(dir, "sam2.1-tiny", "fp32");
    expect(await resolveModelPreset("alpha-llava-7b", { roots: [dir], catalog })).toMatchObject({
      source: "preset-file",
      segmenterDir: folder,
    });

    // Pulling the preset records it (nothing is downloaded again).
    const before = host.requests.length;
    const result = await pullModel("alpha-llava-7b", common);
    expect(host.requests.length).toBe(before);
    expect(result.preset?.segmenterDir).toBe(folder);
    expect(result.models.map((m) => [m.name, m.variant, m.licence])).toEqual([
      ["alpha-clip-l14-336", "grit-20m", "Apache-2.0"],
      ["llava-v1.5-7b", "Q4_K_M", "Llama 2 Community License"],
      ["sam2.1-tiny", "fp32", "Apache-2.0"],
    ]);
    const record = await readJson<{ segmenter: string; segmenterVariant: string }>(
      path.join(dir, "alpha-llava-7b", "preset.json"),
    );
    expect(record).toMatchObject({
      segmenter: path.join("..", "sam2.1-tiny", "fp32"),
      segmenterVariant: "fp32",
    });

    const presetDir = path.join(dir, "alpha-llava-7b");
    expect((await resolveModelPreset("alpha-llava-7b", { roots: [dir], catalog })).segmenterDir).toBe(folder);
    expect((await resolveModelPreset(presetDir)).segmenterDir).toBe(folder);
    expect((await resolveModelPreset(dir)).segmenterDir).toBe(folder);
    const options = await resolveModelOptions({ preset: presetDir });
    expect(options).toMatchObject({ segmenter: folder, llm: path.join(dir, "llava-v1.5-7b", LLM_Q4) });
    // An explicit segmenter folder wins over the preset's.
    expect((await resolveModelOptions({ preset: presetDir, segmenter: "/elsewhere" })).segmenter).toBe(
      "/elsewhere",
    );

    const entries = Object.fromEntries((await listInstalledModels({ roots: [dir] })).map((e) => [e.name, e]));
    expect(entries["alpha-llava-7b"]).toMatchObject({
      kind: "preset",
      complete: true,
      detail: `grit-20m + ${LLM_Q4} + sam2.1-tiny/fp32`,
    });
    expect(entries["llava-v1.5-7b"].licence).toBe("Llama 2 Community License");
    expect(entries["alpha-clip-l14-336/grit-20m"].licence).toBe("Apache-2.0");

    // A recorded segmenter that breaks makes the preset incomplete, saying which part.
    await truncate(path.join(folder, "vision_encoder.onnx_data"), 10);
    const err = await failure(resolveModelPreset("alpha-llava-7b", { roots: [dir], catalog }));
    expect(err.message).toMatch(/segmenter: vision_encoder\.onnx_data has 10 bytes/);
  });

  it("region-vqa pull prints the licence; region-vqa models lists it", async () => {
    // The real catalogue: SlimSAM's sizes are approximate there, so the mirror's small files pass.
    const cliEnv = { ...env, REGION_VQA_MODELS_DIR: dir };
    const pulled = await runCli(["pull", "slimsam-77", "--variant", "quantized"], { env: cliEnv });
    expect(pulled.stderr).not.toMatch(/region-vqa: /);
    expect(pulled.code, pulled.stderr).toBe(0);
    expect(pulled.stdout).toContain(`slimsam-77: ready in ${dir} (2 file(s) downloaded`);
    expect(pulled.stdout).toContain(path.join(dir, "slimsam-77", "quantized"));
    expect(pulled.stdout).toMatch(/^Licence: Apache-2\.0$/m);

    const table = await runCli(["models"], { env: cliEnv });
    expect(table.code, table.stderr).toBe(0);
    expect(table.stdout).toMatch(
      /slimsam-77\/quantized\s+sam-segmenter\s+quantized\s+\S+ kB\s+complete\s+Apache-2\.0/,
    );
    // `models --available` (the same text, without a third process).
    const available = catalogueText();
    expect(available).toMatch(/sam2\.1-tiny .*\n\s+licence: Apache-2\.0/);
    expect(available).toMatch(/pulls: alpha-clip-l14-336, llava-v1\.5-7b, sam2\.1-tiny/);
    expect(available).toContain("--variant quantized: vision_encoder_quantized.onnx (~8.88 MB)");
  });
});

afterAll(removeTempModelsDirs);
