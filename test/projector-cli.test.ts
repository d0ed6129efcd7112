import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it, vi } from "vitest";
import { main } from "../src/cli/index.js";
import { maxAbsDiff } from "../src/common/tensor.js";
import { readMmprojProjector } from "../src/projector/index.js";

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const MMPROJ = path.resolve(repoRoot, "test/fixtures/golden/llava-projector-tiny/tiny-mmproj-f16.gguf");
const dir = mkdtempSync(path.join(tmpdir(), "projector-cli-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("region-vqa convert-projector", () => {
  it("writes a model folder and an mmproj GGUF, JSON summary on stdout", async () => {
    const out = path.join(dir, "folder");
    const gguf = path.join(dir, "proj.gguf");
    const stdout = vi.spyOn(process.stdout, "write").mockImplementation(() => true);
    const stderr = vi.spyOn(console, "error").mockImplementation(() => undefined);
    let code: number;
    let printed: string;
    try {
      code = await main([
        "node",
        "region-vqa",
        "convert-projector",
        MMPROJ,
        "--out",
        out,
        "--mmproj",
        gguf,
        "--gguf-type",
        "f32",
      ]);
      printed = stdout.mock.calls.map((c) => String(c[0])).join("");
    } finally {
      stdout.mockRestore();
      stderr.mockRestore();
    }
    expect(code).toBe(0);
    expect(JSON.parse(printed)).toMatchObject({ inWidth: 64, hiddenWidth: 96, outWidth: 96 });
    expect(JSON.parse(readFileSync(path.join(out, "manifest.json"), "utf8")).kind).toBe("llava-projector");
    const a = await readMmprojProjector(MMPROJ);
    const b = await readMmprojProjector(gguf);
    expect(b.source?.dtype).toBe("F32");
    expect(maxAbsDiff(a.w2, b.w2)).toBe(0);
  });

  it("convert-vision --projector writes a fused folder", async () => {
    const out = path.join(dir, "fused");
    const checkpoint = path.resolve(
      repoRoot,
      "test/fixtures/golden/alpha-clip-tiny/tiny_alphaclip_visual.pth",
    );
    const stdout = vi.spyOn(process.stdout, "write").mockImplementation(() => true);
    const stderr = vi.spyOn(process.stderr, "write").mockImplementation(() => true);
    let code: number;
    try {
      code = await main([
        "node",
        "region-vqa",
        "convert-vision",
        "--checkpoint",
        checkpoint,
        "--out",
        out,
        "--heads",
        "4",
        "--projector",
        MMPROJ,
      ]);
    } finally {
      stdout.mockRestore();
      stderr.mockRestore();
    }
    expect(code).toBe(0);
    const m = JSON.parse(readFileSync(path.join(out, "manifest.json"), "utf8"));
    expect(m.kind).toBe("alpha-clip-llava-fused");
    expect(m.config.outputs).toEqual(["projected"]);
  });

  it("fails with a clear message and exit code 2 without an output", async () => {
    const stderr = vi.spyOn(console, "error").mockImplementation(() => undefined);
    try {
      const code = await main([
        "node",
        "region-vqa",
        "convert-projector",
        path.join(dir, "missing.gguf"),
        "--out",
        path.join(dir, "x"),
      ]);
      expect(code).toBe(2);
      expect(String(stderr.mock.calls[0][0])).toMatch(/not found.*\[model_not_found\]/);
      expect(existsSync(path.join(dir, "x"))).toBe(false);
    } finally {
      stderr.mockRestore();
    }
  });
});
