/**
 * Alpha-CLIP's own task on the bundled model, as a user runs it: `region-vqa classify`,
 * `eval-classify` and `embed-text` in child processes (real ONNX Runtime), and the pipeline's
 * RegionClassifier (text features cached, rankings both ways).
 */
import { mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RegionClassifier } from "../src/pipeline/index.js";
import { runCli } from "./support/run-cli.js";
import { repoRoot } from "./support/tiny-models.js";

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), "classify-cli-"));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe("region-vqa classify", () => {
  it("prints <probability>\\t<label> per label, best first, for the example's masked purple triangle", async () => {
    const r = await runCli([
      ...["classify", "--image", "examples/shapes.png", "--mask", "examples/shapes-mask.png"],
      ...[
        "--label",
        "red circle",
        "--label",
        "purple triangle",
        "--label",
        "purple star",
        "--label",
        "blue square",
      ],
      ...["--threads", "1", "--gpu", "false"],
    ]);
    expect(r.code).toBe(0);
    const lines = r.stdout
      .trim()
      .split("\n")
      .map((l) => l.split("\t"));
    expect(lines).toHaveLength(4);
    expect(lines[0][1]).toBe("purple triangle");
    const probs = lines.map(([p]) => Number(p));
    expect(probs[0]).toBeGreaterThan(0.9);
    expect(probs).toEqual([...probs].sort((a, b) => b - a));
    expect(probs.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 3);
  });

  it("refuses no labels and a label over 77 tokens, each with its code", async () => {
    const base = ["classify", "--image", "examples/shapes.png", "--threads", "1", "--gpu", "false"];
    const none = await runCli(base);
    expect(none.code).not.toBe(0);
    expect(none.stderr).toMatch(/labels_invalid/);
    const long = await runCli([...base, "--label", Array.from({ length: 90 }, () => "red").join(" ")]);
    expect(long.code).not.toBe(0);
    expect(long.stderr).toMatch(/label_too_long/);
  });
});

describe("region-vqa eval-classify", () => {
  it("masks classify far better than the whole image, and labels retrieve their objects", async () => {
    const r = await runCli([
      "eval-classify",
      "--scenes",
      "10",
      "--seed",
      "3",
      "--json",
      "--threads",
      "1",
      "--gpu",
      "false",
    ]);
    expect(r.code).toBe(0);
    const result = JSON.parse(r.stdout) as Record<string, { accuracy: number; total: number }>;
    expect(result.maskTop1.total).toBeGreaterThanOrEqual(20);
    expect(result.maskTop1.accuracy).toBeGreaterThan(0.9);
    expect(result.wholeImageTop1.accuracy).toBeLessThan(result.maskTop1.accuracy - 0.3);
    expect(result.retrieval.accuracy).toBeGreaterThan(0.9);
  });
});

describe("embed-text and the pipeline's classifier agree", () => {
  it("writes unnormalised float32 [N, 128] features equal to RegionClassifier's, which caches each text", async () => {
    const out = path.join(dir, "t.bin");
    const texts = ["a photo of a red circle.", "the blue star"];
    const r = await runCli([
      ...["embed-text", "--model", "models/shapes/text", "--text", texts[0], "--text", texts[1]],
      ...["--out", out, "--threads", "1"],
    ]);
    expect(r.code).toBe(0);
    const bytes = await readFile(out);
    expect(bytes.length).toBe(2 * 128 * 4);
    const cli = new Float32Array(bytes.buffer, bytes.byteOffset, 256);
    const classifier = await RegionClassifier.load(path.join(repoRoot, "models/shapes/text"), {
      device: "cpu",
      threads: 1,
    });
    try {
      const first = await classifier.textFeatures(texts);
      expect(first.encoded).toBe(2);
      first.features.forEach((f, i) =>
        f.forEach((v, j) => expect(Math.abs(v - cli[i * 128 + j])).toBeLessThan(1e-5)),
      );
      const again = await classifier.textFeatures([texts[1], texts[0], texts[1]]);
      expect(again.encoded).toBe(0);
      expect(again.cached).toBe(3);
      expect(classifier.cacheStats().entries).toBe(2);
    } finally {
      await classifier.dispose();
    }
  });
});
