/**
 * Exports the trained shapes model through the project's own converters (the path a real checkpoint
 * takes) into the bundled default model:
 *   models/shapes/preset.json        names the three parts below
 *   models/shapes/vision/            Alpha-CLIP ONNX folder (convertVisionCheckpoint of vision.pth)
 *   models/shapes/llm/mmproj-shapes-f16.gguf   LLaVA-1.5 projector (writeMmprojGguf)
 *   models/shapes/llm/shapes-llm-f16.gguf      LLaMA-architecture LM with the real LLaMA vocabulary
 *   models/shapes/llm/manifest.json  kind llm-gguf, as `pull` writes for published GGUF pairs
 * Usage: npx tsx tools/shapes/export.ts [trainedDir=tools/shapes/out/run] [modelsDir=models/shapes]
 */
import { createHash } from "node:crypto";
import { readFile, mkdir, rm, stat, writeFile } from "node:fs/promises";
import path from "node:path";
import type { ModelManifest } from "../../src/common/manifest.js";
import { readLlamaVocabulary, writeLlamaGguf, type LlamaWeights } from "../../src/llm/index.js";
import { makeProjectorWeights, writeMmprojGguf } from "../../src/projector/index.js";
import { convertVisionCheckpoint, openStateDict } from "../../src/vision/index.js";

const repoRoot = path.resolve(import.meta.dirname, "../..");
const PROJECTOR_FILE = "mmproj-shapes-f16.gguf";
const LLM_FILE = "shapes-llm-f16.gguf";

interface TrainedConfig {
  vision_heads: number;
  lm_dim: number;
  lm_layers: number;
  lm_heads: number;
  lm_ffn: number;
  rms_eps: number;
  rope_base: number;
  [k: string]: unknown;
}

async function sha256(file: string): Promise<string> {
  return createHash("sha256")
    .update(await readFile(file))
    .digest("hex");
}

async function main(): Promise<void> {
  const trained = path.resolve(process.argv[2] ?? path.join(repoRoot, "tools/shapes/out/run"));
  const outDir = path.resolve(process.argv[3] ?? path.join(repoRoot, "models/shapes"));
  const config = JSON.parse(await readFile(path.join(trained, "config.json"), "utf8")) as TrainedConfig;
  await rm(outDir, { recursive: true, force: true });
  await mkdir(path.join(outDir, "llm"), { recursive: true });

  // 1. Vision: the torch.save state dict goes through convert-vision like a released checkpoint.
  await convertVisionCheckpoint({
    checkpoint: path.join(trained, "vision.pth"),
    out: path.join(outDir, "vision"),
    heads: config.vision_heads,
    precision: "fp32",
    name: "shapes-alpha-clip",
  });
  // The manifest records where the checkpoint came from; keep that repo-relative so the shipped
  // folder does not name the machine it was exported on.
  const visionManifestPath = path.join(outDir, "vision", "manifest.json");
  const visionManifest = JSON.parse(await readFile(visionManifestPath, "utf8")) as {
    source?: { path?: string };
  };
  if (visionManifest.source?.path) {
    visionManifest.source.path = path.relative(repoRoot, visionManifest.source.path);
    await writeFile(
      visionManifestPath,
      `${JSON.stringify(visionManifest, null, 2)}
`,
    );
  }

  // 2. Projector + LM weights from the hand-written safetensors files.
  const sd = openStateDict(path.join(trained, "llava.safetensors"));
  const embd = openStateDict(path.join(trained, "token_embd.safetensors"));
  const tensor = (name: string) => ({ data: sd.read(name), shape: sd.info(name).shape });
  const projector = makeProjectorWeights(
    {
      w0: tensor("mm.0.weight"),
      b0: tensor("mm.0.bias"),
      w2: tensor("mm.2.weight"),
      b2: tensor("mm.2.bias"),
    },
    trained,
    { w0: "mm.0.weight", b0: "mm.0.bias", w2: "mm.2.weight", b2: "mm.2.bias" },
  );
  await writeMmprojGguf(path.join(outDir, "llm", PROJECTOR_FILE), projector, {
    precision: "f16",
    name: "shapes-projector",
  });
  const weights: LlamaWeights = {
    tokenEmbedding: embd.read("token_embd.weight"),
    outputNorm: sd.read("output_norm.weight"),
    layers: Array.from({ length: config.lm_layers }, (_, i) => {
      const w = (n: string) => sd.read(`blk.${i}.${n}.weight`);
      return {
        attentionNorm: w("attn_norm"),
        query: w("attn_q"),
        key: w("attn_k"),
        value: w("attn_v"),
        attentionOutput: w("attn_output"),
        ffnNorm: w("ffn_norm"),
        ffnGate: w("ffn_gate"),
        ffnUp: w("ffn_up"),
        ffnDown: w("ffn_down"),
      };
    }),
  };
  sd.close();
  embd.close();
  const vocab = await readLlamaVocabulary(
    path.resolve(repoRoot, "test/fixtures/golden/ggml-vocab-llama-spm.gguf"),
  );
  await writeLlamaGguf(
    path.join(outDir, "llm", LLM_FILE),
    weights,
    {
      name: "shapes-llm",
      contextLength: 1024,
      embeddingLength: config.lm_dim,
      feedForwardLength: config.lm_ffn,
      headCount: config.lm_heads,
      rmsNormEps: config.rms_eps,
      ropeFreqBase: config.rope_base,
      ropeLayout: "pairs", // trained with llama.cpp's adjacent-pair rotation: no permutation
      weightType: "F16",
    },
    vocab,
  );

  // 3. Manifests: the GGUF pair like `pull` records published ones, and the preset naming all three.
  const files = [];
  for (const [file, role] of [
    [PROJECTOR_FILE, "projector"],
    [LLM_FILE, "llm"],
  ] as const) {
    const full = path.join(outDir, "llm", file);
    files.push({ path: file, bytes: (await stat(full)).size, sha256: await sha256(full), role });
  }
  const manifest: ModelManifest = {
    kind: "llm-gguf",
    formatVersion: 1,
    name: "shapes-llm",
    createdAt: new Date().toISOString(),
    config: { projector: PROJECTOR_FILE, projectorType: "mlp2x_gelu", trained: config },
    files,
    origin: { trainer: "tools/shapes (see tools/shapes/README.md)" },
  };
  await writeFile(path.join(outDir, "llm", "manifest.json"), `${JSON.stringify(manifest, null, 2)}\n`);
  const preset = {
    kind: "preset",
    formatVersion: 1,
    name: "shapes",
    vision: "vision",
    projector: `llm/${PROJECTOR_FILE}`,
    llm: `llm/${LLM_FILE}`,
    createdAt: manifest.createdAt,
    description: "miniature Alpha-CLIP + LLaVA-1.5 trained on the synthetic shapes world (tools/shapes)",
  };
  await writeFile(path.join(outDir, "preset.json"), `${JSON.stringify(preset, null, 2)}\n`);
  console.error(`export: wrote ${outDir}`);
}

await main();
