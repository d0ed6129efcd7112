/**
 * Numeric CLI flags are checked (range and whole numbers) before any model loads: a typo fails at
 * once naming the flag, not after the models loaded (minutes for the real ones) or with an unrelated
 * error. The CLI runs as a real separate process.
 */
import path from "node:path";
import { describe, expect, it } from "vitest";
import { numberFlag } from "../src/cli/number-flag.js";
import { runCli } from "./support/run-cli.js";
import { goldenAlphaClip } from "./support/tiny-models.js";

const image = path.join(goldenAlphaClip, "test_image.png");

describe("numberFlag", () => {
  it("accepts numbers in range and refuses others with the flag's name", () => {
    expect(numberFlag(undefined, "--x", { min: 0 })).toBeUndefined();
    expect(numberFlag("0.5", "--x", { min: 0, max: 1 })).toBe(0.5);
    expect(numberFlag("7", "--x", { min: 1, integer: true })).toBe(7);
    for (const bad of ["", " ", "abc", "2.5", "0", "1e400", "-1"]) {
      expect(() => numberFlag(bad, "--x", { min: 1, integer: true })).toThrow(/--x must be an integer >= 1/);
    }
    expect(() => numberFlag("1.5", "--p", { min: 0, max: 1 })).toThrow(/--p must be a number in \[0, 1\]/);
  });
});

describe("region-vqa ask with a malformed numeric flag", () => {
  // Model paths that do not exist: a flag checked first fails before anything tries to load them.
  const missingModels = ["--vision", "/nonexistent/vision", "--llm", "/nonexistent/llm.gguf"];
  for (const [flag, value] of [
    ["--max-tokens", "2.5"],
    ["--top-k", "1.5"],
    ["--seed", "0.25"],
  ]) {
    it(`refuses ${flag} ${value} before loading the models`, async () => {
      const r = await runCli(["ask", ...missingModels, "--image", image, "--question", "Q?", flag, value]);
      expect(r.code).toBe(2);
      expect(r.stderr).toContain(`${flag} must be an integer`);
      expect(r.stderr).not.toMatch(/model_not_found/);
      expect(r.stdout).toBe("");
    });
  }
});
