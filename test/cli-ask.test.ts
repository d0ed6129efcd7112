/**
 * `region-vqa ask` as a user runs it: a separate process, tiny real models (random LLM weights, so the
 * answer text is not meaningful; the bundled model's tests check answers), stdout = answer text only.
 */
import path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { runCli } from "./support/run-cli.js";
import { goldenAlphaClip, tinyModels, type TinyModels } from "./support/tiny-models.js";

const image = path.join(goldenAlphaClip, "test_image.png");
const mask = path.join(goldenAlphaClip, "test_mask.png");

describe("region-vqa ask", () => {
  let models: TinyModels;
  beforeAll(async () => {
    models = await tinyModels();
  });
  const modelArgs = () => ["--vision", models.vision, "--projector", models.projector, "--llm", models.llm];

  it("answers through vision -> projector -> LLM and prints only the answer on stdout", async () => {
    const args = ["ask", ...modelArgs(), "--image", image, "--mask", mask, "--question", "What is it?"];
    const a = await runCli([
      ...args,
      "--max-tokens",
      "6",
      "--temperature",
      "0",
      "--verbose",
      "--device",
      "cpu",
    ]);
    expect(a.stderr).toMatch(/encode: /);
    expect(a.code).toBe(0);
    expect(a.stdout.endsWith("\n")).toBe(true);
    expect(a.stdout).not.toMatch(/encode:|loaded/);
    // greedy decoding is reproducible across processes
    const b = await runCli([...args, "--max-tokens", "6", "--temperature", "0", "--device", "cpu"]);
    expect(b.code).toBe(0);
    expect(b.stdout).toBe(a.stdout);
  });

  it("asks follow-up questions in one conversation", async () => {
    const r = await runCli([
      "ask",
      ...modelArgs(),
      "--image",
      image,
      "--question",
      "First?",
      "--question",
      "Second?",
      "--max-tokens",
      "3",
      "--device",
      "cpu",
    ]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^Q: First\?\nA: .*\nQ: Second\?\nA: .*\n$/s);
  });

  it("fails with a clear message and exit code 2 on bad input", async () => {
    const r = await runCli(["ask", ...modelArgs(), "--image", image, "--box", "5,5,1,1", "--question", "Q?"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/box_invalid/);
    expect(r.stdout).toBe("");
    const m = await runCli(["ask", "--vision", models.vision, "--image", image, "--question", "Q?"]);
    expect(m.code).toBe(2);
    expect(m.stderr).toMatch(/--llm/);
  });
});
