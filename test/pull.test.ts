import { existsSync } from "node:fs";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { afterAll, afterEach, beforeEach, describe, expect, it } from "vitest";
import type { ModelManifest } from "../src/common/manifest.js";
import { maxAbsDiff } from "../src/common/tensor.js";
import {
  hostConfigFromEnv,
  listInstalledModels,
  pullModel,
  resolveModelPreset,
  type Catalog,
} from "../src/models/index.js";
import { AlphaClipEncoder } from "../src/vision/index.js";
import { fakeBytes, sha256Of, startFakeHost, type FakeHost } from "./support/pull-fakehost.js";
import {
  catalogWith,
  CKPT_20M,
  failure,
  HF_DIR,
  LLM_Q4,
  LLM_Q8,
  MMPROJ,
  OPENXLAB_DIR,
  removeTempModelsDirs,
  SAM21_DIR,
  SAM21_FP32_FILES,
  tempModelsDir,
} from "./support/pull-helpers.js";

const repoRoot = path.resolve(import.meta.dirname, "..");
const golden = (p: string) => path.resolve(repoRoot, "test/fixtures/golden", p);
async function goldenF32(name: string): Promise<Float32Array> {
  const buf = await readFile(golden(`alpha-clip-tiny/${name}.bin`));
  return new Float32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.length));
}

describe("pull alpha-llava-7b from loopback hosts at the real URL paths", () => {
  let host: FakeHost;
  let dir: string;
  let catalog: Catalog;
  let env: NodeJS.ProcessEnv;
  let ckpt: Buffer;
  let mmproj: Buffer;
  const llmQ4 = fakeBytes(200_000, 4);
  const llmQ8 = fakeBytes(150_000, 8);
  // The preset's segmenter (pull does not parse the graphs; pull-segmenter.test.ts loads real ones).
  const sam = Object.fromEntries(SAM21_FP32_FILES.map((f, i) => [f, fakeBytes(10_000 + i, 30 + i)]));

  beforeEach(async () => {
    // Hugging Face paths redirect to a second server (another origin) like huggingface.co's CDN.
    host = await startFakeHost({ redirectHfToCdn: true });
    ckpt = await readFile(golden("alpha-clip-tiny/tiny_alphaclip_visual.pth"));
    mmproj = await readFile(golden("llava-projector-tiny/tiny-mmproj-f16.gguf"));
    host.setFile(`${OPENXLAB_DIR}/${CKPT_20M}`, ckpt);
    host.setFile(`${HF_DIR}/${MMPROJ}`, mmproj);
    host.setFile(`${HF_DIR}/${LLM_Q4}`, llmQ4);
    host.setFile(`${HF_DIR}/${LLM_Q8}`, llmQ8);
    for (const [name, body] of Object.entries(sam)) host.setFile(`${SAM21_DIR}/${name}`, body);
    host.requireToken("hf_test_token");
    // The tiny checkpoint has 4 heads (not stored in checkpoints); the real ViT-L has 16.
    catalog = catalogWith(
      {
        [CKPT_20M]: ckpt,
        [MMPROJ]: mmproj,
        [LLM_Q4]: llmQ4,
        [LLM_Q8]: llmQ8,
        ...Object.fromEntries(Object.entries(sam).map(([name, body]) => [`sam2.1-tiny/${name}`, body])),
      },
      { heads: 4 },
    );
    dir = await tempModelsDir();
    env = {
      REGION_VQA_BASE_URL_HF: host.baseUrl,
      REGION_VQA_BASE_URL_OPENXLAB: host.baseUrl,
      HF_TOKEN: "hf_test_token",
    };
  });
  afterEach(async () => {
    await host.close();
  });

  it("downloads, verifies, converts and records the preset; serve can resolve it by name", async () => {
    const logs: string[] = [];
    const result = await pullModel("alpha-llava-7b", {
      catalog,
      env,
      modelsDir: dir,
      onLog: (m) => logs.push(m),
    });

    expect(result.kind).toBe("preset");
    expect(result.converted).toBe(true);
    const preset = result.preset!;
    expect(preset.visionDir).toBe(path.join(dir, "alpha-clip-l14-336", "grit-20m"));
    expect(preset.projectorPath).toBe(path.join(dir, "llava-v1.5-7b", MMPROJ));
    expect(preset.llmPath).toBe(path.join(dir, "llava-v1.5-7b", LLM_Q4));
    expect(preset.segmenterDir).toBe(path.join(dir, "sam2.1-tiny", "fp32"));
    expect((await readFile(preset.llmPath)).equals(llmQ4)).toBe(true);
    expect((await readFile(preset.projectorPath)).equals(mmproj)).toBe(true);

    // The converted Alpha-CLIP folder: the converter's manifest plus where it came from.
    const vision = JSON.parse(
      await readFile(path.join(preset.visionDir, "manifest.json"), "utf8"),
    ) as ModelManifest;
    expect(vision.kind).toBe("alpha-clip-vision");
    expect(vision.config).toMatchObject({ width: 64, layers: 3, heads: 4 });
    expect(vision.origin).toMatchObject({
      catalog: "alpha-clip-l14-336",
      variant: "grit-20m",
      file: CKPT_20M,
    });
    expect((vision.origin as { sha256: string }).sha256).toBe(sha256Of(ckpt));
    expect(vision.source?.sha256).toBe(sha256Of(ckpt));
    // The pulled folder loads in ONNX Runtime and gives the reference implementation's LLaVA features.
    const encoder = await AlphaClipEncoder.load(preset.visionDir, { device: "cpu", threads: 1 });
    try {
      const out = await encoder.encode({
        pixelValues: { data: await goldenF32("llava_pixel_values"), shape: [1, 3, 84, 84] },
        alpha: { data: await goldenF32("llava_mask_alpha"), shape: [1, 1, 84, 84] },
      });
      expect(out.features!.shape).toEqual([1, 36, 64]);
      expect(
        maxAbsDiff(out.features!.data, await goldenF32("llava_mask_llava_features")),
      ).toBeLessThanOrEqual(1e-4);
    } finally {
      await encoder.dispose();
    }
    // The checkpoint is deleted once converted, and no work folder is left behind.
    expect(existsSync(path.join(dir, ".downloads", CKPT_20M))).toBe(false);
    expect(existsSync(`${preset.visionDir}.converting`)).toBe(false);

    const llm = JSON.parse(
      await readFile(path.join(dir, "llava-v1.5-7b", "manifest.json"), "utf8"),
    ) as ModelManifest;
    expect(llm.kind).toBe("llm-gguf");
    expect(llm.files).toEqual([
      { path: MMPROJ, bytes: mmproj.length, sha256: sha256Of(mmproj), role: "projector" },
      { path: LLM_Q4, bytes: llmQ4.length, sha256: sha256Of(llmQ4), role: "llm" },
    ]);

    // The token went to the Hugging Face host only: not to its CDN, not to OpenXLab.
    const hfOrigin = host.requests.filter(
      (r) => r.server === "origin" && (r.path.startsWith(HF_DIR) || r.path.startsWith(SAM21_DIR)),
    );
    const cdn = host.requests.filter((r) => r.server === "cdn");
    const openxlab = host.requests.filter((r) => r.path.startsWith(OPENXLAB_DIR));
    // Two GGUF files and the segmenter's four.
    expect(hfOrigin.map((r) => r.status)).toEqual([302, 302, 302, 302, 302, 302]);
    expect(hfOrigin.every((r) => r.authorization === "Bearer hf_test_token")).toBe(true);
    expect(cdn).toHaveLength(6);
    expect(cdn.every((r) => r.authorization === undefined)).toBe(true);
    expect(openxlab.map((r) => [r.status, r.authorization])).toEqual([[200, undefined]]);

    const entries = await listInstalledModels({ roots: [dir] });
    const summary = Object.fromEntries(entries.map((e) => [e.name, [e.kind, e.complete]]));
    expect(summary).toEqual({
      "alpha-clip-l14-336/grit-20m": ["alpha-clip-vision", true],
      "alpha-llava-7b": ["preset", true],
      "llava-v1.5-7b": ["llm-gguf", true],
      "sam2.1-tiny/fp32": ["sam-segmenter", true],
    });

    // By name (what `serve --model alpha-llava-7b` does), by preset folder, and by models folder.
    const byName = await resolveModelPreset("alpha-llava-7b", { roots: [dir], catalog });
    expect(byName).toEqual({ ...preset, name: "alpha-llava-7b", source: "preset-file" });
    const byFolder = await resolveModelPreset(path.join(dir, "alpha-llava-7b"));
    expect(byFolder).toMatchObject({ visionDir: preset.visionDir, llmPath: preset.llmPath });
    const byScan = await resolveModelPreset(dir);
    expect(byScan).toMatchObject({
      source: "folder",
      visionDir: preset.visionDir,
      projectorPath: preset.projectorPath,
      segmenterDir: preset.segmenterDir,
    });

    // Running it again downloads and converts nothing.
    const before = host.requests.length;
    const again = await pullModel("alpha-llava-7b", { catalog, env, modelsDir: dir });
    expect(host.requests.length).toBe(before);
    expect(again.converted).toBe(false);
    expect(again.files.every((f) => f.skipped)).toBe(true);
  });

  it("adds another quantisation to the same folder without downloading the projector again", async () => {
    await pullModel("llava-v1.5-7b", { catalog, env, modelsDir: dir });
    const r = await pullModel("llava-v1.5-7b", { catalog, env, modelsDir: dir, quant: "q8_0" });
    expect(r.files.map((f) => [f.file, f.skipped])).toEqual([
      [MMPROJ, true],
      [LLM_Q8, false],
    ]);
    const manifest = JSON.parse(
      await readFile(path.join(dir, "llava-v1.5-7b", "manifest.json"), "utf8"),
    ) as ModelManifest;
    expect(manifest.files.map((f) => f.path)).toEqual([MMPROJ, LLM_Q4, LLM_Q8]);
    expect(manifest.origin).toMatchObject({ variants: ["Q4_K_M", "Q8_0"] });
    expect(manifest.files.find((f) => f.path === LLM_Q8)?.sha256).toBe(sha256Of(llmQ8));
  });

  it("checks against the sha256 Hugging Face states (X-Linked-Etag) when the catalogue has none", async () => {
    const noSha = catalogWith({}, { withSha: false });
    const logs: string[] = [];
    await pullModel("llava-v1.5-7b", { catalog: noSha, env, modelsDir: dir, onLog: (m) => logs.push(m) });
    expect(logs.filter((m) => m.includes("no published sha256"))).toEqual([]);

    // A CDN that serves other bytes (same size) than the hash the origin states is refused.
    const tampered = Buffer.from(llmQ4);
    tampered[1234] ^= 0xff;
    host.tamperCdn(`${HF_DIR}/${LLM_Q4}`, tampered);
    const other = await tempModelsDir();
    const err = await failure(pullModel("llava-v1.5-7b", { catalog: noSha, env, modelsDir: other }));
    expect(err.code).toBe("checksum_mismatch");
    expect(err.message).toContain(`does not match the expected ${sha256Of(llmQ4)} (from the host)`);
    expect(existsSync(path.join(other, "llava-v1.5-7b", LLM_Q4))).toBe(false);
  });

  it("redoes an interrupted conversion and reports it incomplete until then", async () => {
    // What a conversion killed half-way leaves: the work folder with some files and no manifest.
    const work = path.join(dir, "alpha-clip-l14-336", "grit-20m.converting");
    await mkdir(work, { recursive: true });
    await writeFile(path.join(work, "model.onnx"), Buffer.alloc(1000));
    const listed = await listInstalledModels({ roots: [dir] });
    expect(listed).toHaveLength(1);
    expect(listed[0]).toMatchObject({ name: "alpha-clip-l14-336/grit-20m.converting", complete: false });
    expect(listed[0].problems[0]).toMatch(/no manifest\.json.*run `region-vqa pull` again/);
    await expect(resolveModelPreset("alpha-llava-7b", { roots: [dir], catalog })).rejects.toMatchObject({
      message: expect.stringMatching(/Run `region-vqa pull alpha-llava-7b`/),
    });

    const r = await pullModel("alpha-clip-l14-336", { catalog, env, modelsDir: dir, keepSource: true });
    expect(r.converted).toBe(true);
    expect(existsSync(work)).toBe(false);
    const entries = await listInstalledModels({ roots: [dir] });
    expect(entries.map((e) => [e.name, e.complete])).toEqual([["alpha-clip-l14-336/grit-20m", true]]);
    // --keep-source keeps the checkpoint for later conversions.
    expect((await readFile(path.join(dir, ".downloads", CKPT_20M))).equals(ckpt)).toBe(true);
  });

  it("refuses a checkpoint whose sha256 differs from the catalogue's and installs nothing", async () => {
    const wrong = structuredClone(catalog);
    wrong.models[0].variants["grit-20m"].files[0].sha256 = sha256Of(Buffer.from("another file"));
    const err = await failure(pullModel("alpha-clip-l14-336", { catalog: wrong, env, modelsDir: dir }));
    expect(err.code).toBe("checksum_mismatch");
    expect(existsSync(path.join(dir, ".downloads", CKPT_20M))).toBe(false);
    expect(existsSync(path.join(dir, ".downloads", `${CKPT_20M}.corrupt`))).toBe(true);
    expect(existsSync(path.join(dir, "alpha-clip-l14-336"))).toBe(false);
    const entries = await listInstalledModels({ roots: [dir] });
    expect(entries.map((e) => [e.kind, e.complete])).toEqual([["corrupt-file", false]]);
  });

  it("refuses up front when the files cannot fit on the disk", async () => {
    const huge = structuredClone(catalog);
    const q4 = huge.models[1].variants.Q4_K_M.files[0];
    q4.bytes = undefined;
    q4.sha256 = undefined;
    q4.approxBytes = 2 ** 60;
    const err = await failure(pullModel("alpha-llava-7b", { catalog: huge, env, modelsDir: dir }));
    expect(err.code).toBe("download_failed");
    expect(err.details?.reason).toBe("disk_full");
    expect(err.message).toMatch(/not enough disk space .* for alpha-llava-7b: about .* to download/);
    expect(host.requests).toEqual([]);
  });

  it("says which variable to set when Hugging Face wants a token", async () => {
    const { HF_TOKEN: _dropped, ...noToken } = env;
    const err = await failure(pullModel("llava-v1.5-7b", { catalog, env: noToken, modelsDir: dir }));
    expect(err.code).toBe("download_failed");
    expect(err.message).toMatch(/HTTP 401.*REGION_VQA_HF_TOKEN or HF_TOKEN/);
  });

  it("reports a model the mirror lacks (404) with its URL", async () => {
    const err = await failure(pullModel("llava-v1.5-7b", { catalog, env, modelsDir: dir, quant: "Q6_K" }));
    expect(err.code).toBe("download_failed");
    expect(err.message).toContain(`${host.baseUrl}${HF_DIR}/llava-v1.5-7b-Q6_K.gguf answered HTTP 404`);
  });
});

describe("host configuration from the environment", () => {
  it("defaults to the publishers and honours base URL, mirror and token variables", () => {
    expect(hostConfigFromEnv({}).baseUrls).toEqual({
      huggingface: "https://huggingface.co",
      openxlab: "https://download.openxlab.org.cn",
      openai: "https://openaipublic.azureedge.net",
    });
    expect(hostConfigFromEnv({}).headers).toEqual({});
    const c = hostConfigFromEnv({
      REGION_VQA_MIRROR_HUGGINGFACE_CO: "https://hf.mirror.local/x",
      REGION_VQA_MIRROR_DOWNLOAD_OPENXLAB_CN: "https://ignored-wrong-name",
      REGION_VQA_MIRROR_DOWNLOAD_OPENXLAB_ORG_CN: "https://xlab.mirror.local",
      REGION_VQA_HF_TOKEN: "a",
      HF_TOKEN: "b",
    });
    expect(c.baseUrls).toEqual({
      huggingface: "https://hf.mirror.local/x",
      openxlab: "https://xlab.mirror.local",
      openai: "https://openaipublic.azureedge.net",
    });
    expect(c.headers).toEqual({ huggingface: { authorization: "Bearer a" } });
    expect(hostConfigFromEnv({ HF_ENDPOINT: "https://hf-mirror.com" }).baseUrls.huggingface).toBe(
      "https://hf-mirror.com",
    );
    expect(
      hostConfigFromEnv({ HF_ENDPOINT: "https://hf-mirror.com", REGION_VQA_BASE_URL_HF: "http://own" })
        .baseUrls.huggingface,
    ).toBe("http://own");
  });
});

afterAll(removeTempModelsDirs);
