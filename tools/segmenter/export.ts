/**
 * Exports the trained shapes-world segmenter into the bundled default model, through the project's
 * own ONNX writer (src/segmenter/mini-sam-graph.ts rebuilds the PyTorch forward node by node):
 *   models/shapes/segmenter/   vision_encoder.onnx, prompt_encoder_mask_decoder.onnx, manifest.json
 * Usage: npx tsx tools/segmenter/export.ts [trainedDir=tools/segmenter/out/run1] [outDir=models/shapes/segmenter]
 */
import { createHash } from "node:crypto";
import { readFile, rm } from "node:fs/promises";
import path from "node:path";
import { SHAPES_SEGMENTER_ARCHITECTURE, writeMiniSamFolder } from "../../src/segmenter/index.js";
import { openStateDict } from "../../src/vision/index.js";

const repoRoot = path.resolve(import.meta.dirname, "../..");

async function main(): Promise<void> {
  const trained = path.resolve(process.argv[2] ?? path.join(repoRoot, "tools/segmenter/out/run1"));
  const outDir = path.resolve(process.argv[3] ?? path.join(repoRoot, "models/shapes/segmenter"));
  const checkpoint = path.join(trained, "segmenter.pth");
  const bytes = await readFile(checkpoint);
  const weights = openStateDict(checkpoint);
  await rm(outDir, { recursive: true, force: true });
  try {
    const manifest = await writeMiniSamFolder(outDir, SHAPES_SEGMENTER_ARCHITECTURE, weights, {
      name: "shapes-segmenter",
      description:
        "miniature SAM 2.1-style segmenter trained on the synthetic shapes world (tools/segmenter); same inputs and outputs as onnx-community/sam2.1-hiera-tiny-ONNX at its own sizes",
      source: {
        // Repo-relative, so the shipped folder does not name the machine it was exported on.
        path: path.relative(repoRoot, checkpoint),
        sha256: createHash("sha256").update(bytes).digest("hex"),
        bytes: bytes.length,
        format: "pytorch-zip",
      },
    });
    console.log(`wrote ${outDir}: ${manifest.files.map((f) => `${f.path} (${f.bytes} B)`).join(", ")}`);
  } finally {
    weights.close();
  }
}

await main();
