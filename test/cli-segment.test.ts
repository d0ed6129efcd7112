/**
 * `region-vqa segment`, `ask --point` and `eval-segment` as a user runs them, on the bundled model
 * (real ONNX Runtime and llama.cpp in a child process).
 */
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import sharp from "sharp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { encodePng, renderScene, type Scene } from "../src/shapes/index.js";
import { runCli } from "./support/run-cli.js";

const scene: Scene = {
  seed: 0,
  index: 0,
  width: 240,
  height: 180,
  objects: [
    { shape: "square", colour: "red", x0: 30, y0: 50, size: 60 },
    { shape: "star", colour: "green", x0: 140, y0: 50, size: 80 },
  ],
};
const { image, masks } = renderScene(scene);

let dir: string;
let imagePath: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), "cli-segment-"));
  imagePath = path.join(dir, "scene.png");
  await writeFile(imagePath, await encodePng(image));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe("region-vqa segment", () => {
  it("writes a single-channel PNG of the image's size (255 inside) and prints the score", async () => {
    const out = path.join(dir, "mask.png");
    const r = await runCli([
      "segment",
      "--image",
      imagePath,
      "--point",
      "60,80",
      "--out",
      out,
      "--threads",
      "1",
    ]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const score = Number(r.stdout.trim());
    expect(Number.isFinite(score)).toBe(true);
    expect(score).toBeGreaterThan(0.5);
    const { data, info } = await sharp(await readFile(out))
      .raw()
      .toBuffer({ resolveWithObject: true });
    expect([info.width, info.height, info.channels]).toEqual([240, 180, 1]);
    expect(new Set(data)).toEqual(new Set([0, 255]));
    let inter = 0;
    let union = 0;
    masks[0].data.forEach((t, i) => {
      const m = data[i] === 255;
      if (m && t) inter++;
      if (m || t) union++;
    });
    expect(inter / union).toBeGreaterThan(0.9);
  });

  it("--json gives the candidates and timings; bad points exit non-zero with the error code", async () => {
    const out = path.join(dir, "star.png");
    const r = await runCli([
      ...["segment", "--image", imagePath, "--point", "180,90", "--point", "60,80,0"],
      ...["--out", out, "--json", "--threads", "1"],
    ]);
    expect(r.code).toBe(0);
    const summary = JSON.parse(r.stdout) as { candidates: unknown[]; area: number; timings: object };
    expect(summary.candidates).toHaveLength(3);
    expect(summary.area).toBeGreaterThan(1000);
    const bad = await runCli(["segment", "--image", imagePath, "--point", "600,10", "--out", out]);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/point_outside_image/);
    const malformed = await runCli(["segment", "--image", imagePath, "--point", "1,2,3,4", "--out", out]);
    expect(malformed.code).not.toBe(0);
    expect(malformed.stderr).toMatch(/point_invalid/);
  });
});

describe("region-vqa ask --point", () => {
  it("answers about the clicked object", async () => {
    const r = await runCli([
      ...[
        "ask",
        "--image",
        imagePath,
        "--point",
        "180,90",
        "--question",
        "What is in the highlighted region?",
      ],
      ...["--max-tokens", "16", "--device", "cpu", "--gpu", "false", "--threads", "1"],
    ]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/green star/i);
  });

  it("--box with --refine segments the box's object", async () => {
    const r = await runCli([
      ...[
        "ask",
        "--image",
        imagePath,
        "--box",
        "25,45,95,115",
        "--refine",
        "--question",
        "What colour is it?",
      ],
      ...["--max-tokens", "16", "--device", "cpu", "--gpu", "false", "--threads", "1"],
    ]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/\bred\b/i);
  });
});

describe("region-vqa eval-segment", () => {
  it("reports mean IoU per prompt kind as JSON", async () => {
    const r = await runCli(["eval-segment", "--scenes", "12", "--seed", "7", "--json", "--threads", "1"]);
    expect(r.code).toBe(0);
    const result = JSON.parse(r.stdout) as {
      scenes: number;
      perPrompt: Record<string, { meanIou: number; count: number }>;
    };
    expect(result.scenes).toBe(12);
    for (const kind of ["one_click", "box", "two_clicks"]) {
      expect(result.perPrompt[kind].count).toBe(12);
      expect(result.perPrompt[kind].meanIou).toBeGreaterThan(0.8);
    }
  });
});
