/**
 * `region-vqa segment`, `ask --point` and `eval-segment` as a user runs them, on the bundled model
 * (real ONNX Runtime and llama.cpp in a child process).
 */
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import sharp from "sharp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { encodePng, maskIou } from "../src/shapes/index.js";
import { blueCentre, pointSceneImage, pointSceneMasks, redCentre } from "./support/point-scene.js";
import { runCli } from "./support/run-cli.js";

const image = pointSceneImage;
const masks = pointSceneMasks;

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
      redCentre.join(","),
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
    const png = await readFile(out);
    const meta = await sharp(png).metadata();
    expect([meta.width, meta.height, meta.channels]).toEqual([240, 180, 1]);
    const { data } = await sharp(png).extractChannel(0).raw().toBuffer({ resolveWithObject: true });
    expect(new Set(data)).toEqual(new Set([0, 255]));
    const mask = { width: 240, height: 180, data: Uint8Array.from(data, (v) => (v === 255 ? 1 : 0)) };
    expect(maskIou(mask, masks[0])).toBeGreaterThan(0.9);
  });

  it("--json gives the candidates and timings; bad points exit non-zero with the error code", async () => {
    const out = path.join(dir, "star.png");
    const r = await runCli([
      ...[
        "segment",
        "--image",
        imagePath,
        "--point",
        blueCentre.join(","),
        "--point",
        `${redCentre.join(",")},0`,
      ],
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
        blueCentre.join(","),
        "--question",
        "What is in the highlighted region?",
      ],
      ...["--max-tokens", "16", "--device", "cpu", "--gpu", "false", "--threads", "1"],
    ]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/blue circle/i);
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
