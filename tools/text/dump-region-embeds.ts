/**
 * Training data for the bundled text tower: the frozen bundled Alpha-CLIP's `image_embed` of every
 * object region of shapes scenes, through the same LLaVA-path preprocessing the pipeline uses (the
 * vision tower was trained on it), with each region's colour and shape.
 *
 * Usage: npx tsx tools/text/dump-region-embeds.ts <outDir> [seed=21] [scenes=4000] [boxShare=0.25]
 * Writes <outDir>/embeds.f32 (float32 LE [N, D], unnormalised) and <outDir>/regions.json.
 */
import { mkdir, writeFile } from "node:fs/promises";
import path from "node:path";
import { sceneRng } from "../../src/shapes/prng.js";
import { generateScene, objectBox, renderScene } from "../../src/shapes/scene.js";
import {
  AlphaClipEncoder,
  boxToMask,
  llavaAlphaFromMask,
  preprocessImageForLlava,
} from "../../src/vision/index.js";

const repoRoot = path.resolve(import.meta.dirname, "../..");

async function main(): Promise<void> {
  const [outDir, seedText = "21", scenesText = "4000", boxShareText = "0.25"] = process.argv.slice(2);
  if (!outDir) throw new Error("usage: dump-region-embeds.ts <outDir> [seed] [scenes] [boxShare]");
  const seed = Number(seedText);
  const scenes = Number(scenesText);
  const boxShare = Number(boxShareText);
  const encoder = await AlphaClipEncoder.load(path.join(repoRoot, "models/shapes/vision"), {
    device: "cpu",
    threads: 2,
  });
  const size = encoder.imageSize;
  const rows: Float32Array[] = [];
  const regions: Array<{ scene: number; object: number; colour: string; shape: string; kind: string }> = [];
  const t0 = performance.now();
  try {
    for (let index = 0; index < scenes; index++) {
      const scene = generateScene(seed, index);
      const { image, masks } = renderScene(scene);
      const rng = sceneRng((seed ^ 0x7e47e47) >>> 0, index);
      const kinds = masks.map(() => (rng.nextFloat() < boxShare ? "box" : "mask"));
      const alpha = new Float32Array(masks.length * size * size);
      masks.forEach((m, k) => {
        const region =
          kinds[k] === "box" ? boxToMask(objectBox(scene.objects[k]), scene.width, scene.height) : m;
        alpha.set(llavaAlphaFromMask(region, size).alpha.data, k * size * size);
      });
      const out = await encoder.encode({
        pixelValues: preprocessImageForLlava(image, size).pixelValues,
        alpha: { data: alpha, shape: [masks.length, 1, size, size] },
      });
      const embed = out.imageEmbed!;
      const d = embed.shape[1];
      masks.forEach((_, k) => {
        rows.push(embed.data.slice(k * d, (k + 1) * d));
        const o = scene.objects[k];
        regions.push({ scene: index, object: k, colour: o.colour, shape: o.shape, kind: kinds[k] });
      });
      if (index % 500 === 0)
        console.error(`${index} scenes, ${((performance.now() - t0) / 1000).toFixed(0)} s`);
    }
  } finally {
    await encoder.dispose();
  }
  await mkdir(outDir, { recursive: true });
  const all = new Float32Array(rows.length * rows[0].length);
  rows.forEach((r, i) => all.set(r, i * r.length));
  await writeFile(path.join(outDir, "embeds.f32"), Buffer.from(all.buffer));
  await writeFile(path.join(outDir, "regions.json"), JSON.stringify({ seed, dim: rows[0].length, regions }));
  console.error(`${rows.length} regions in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
}

await main();
