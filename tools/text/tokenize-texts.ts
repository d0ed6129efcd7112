/**
 * The texts the bundled text tower is trained on, as CLIP BPE ids (the product's own tokenizer):
 * the 24 colour-shape labels written with each template.
 * Usage: npx tsx tools/text/tokenize-texts.ts <out.json>
 */
import { writeFile } from "node:fs/promises";
import { COLOUR_NAMES, SHAPES } from "../../src/shapes/index.js";
import { ClipTokenizer } from "../../src/text/tokenizer.js";

/** Alpha-CLIP's own template first (the evaluation's default), then a few everyday phrasings. */
export const TEMPLATES = [
  "a photo of a {}.",
  "a {}.",
  "the {}.",
  "{}",
  "a picture of a {}.",
  "an image of a {}.",
  "a {} in the image.",
  "this is a {}.",
];

async function main(): Promise<void> {
  const out = process.argv[2];
  if (!out) throw new Error("usage: tokenize-texts.ts <out.json>");
  const tokenizer = await ClipTokenizer.load();
  const labels = COLOUR_NAMES.flatMap((c) => SHAPES.map((s) => `${c} ${s}`));
  const ids: Record<string, number[][]> = {};
  for (const t of TEMPLATES) {
    const tok = tokenizer.tokenize(labels.map((l) => t.replaceAll("{}", l)));
    ids[t] = labels.map((_, i) => Array.from(tok.data.subarray(i * 77, (i + 1) * 77)));
  }
  await writeFile(out, JSON.stringify({ labels, templates: TEMPLATES, ids }));
}

await main();
