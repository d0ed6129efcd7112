/**
 * The embeddings addon with whichever llama.cpp build node-llama-cpp loads, and `--gpu auto`. Each
 * build runs in a process of its own (support/answer-with-backend.ts): a loaded build cannot be
 * unloaded, and the addon refuses to guess between two.
 *
 * ggml's Vulkan backend ignores CPU-type devices such as Mesa's lavapipe, so on a machine without a GPU
 * the Vulkan build runs on its CPU fallback: that is what is tested here (the addon binds to the Vulkan
 * build's library and the answer equals the CPU build's). Forcing it onto lavapipe
 * (GGML_VK_VISIBLE_DEVICES=0) works but takes minutes for one short answer (shader pipelines compile on
 * a software rasteriser), too slow for every CI run; see docs/benchmarks.md.
 */
import { describe, expect, it } from "vitest";
import { hardwareGpuPresent } from "../src/common/gpu.js";
import { runNode } from "./support/run-cli.js";
import { repoRoot } from "./support/tiny-models.js";
import path from "node:path";

interface Answered {
  device: string;
  libraryPath: string;
  answer: string;
}

async function answerWith(gpu: string): Promise<Answered> {
  const r = await runNode(
    ["--import", "tsx", path.join(repoRoot, "test/support/answer-with-backend.ts"), gpu],
    {
      timeoutMs: 300_000,
    },
  );
  if (r.code !== 0) throw new Error(`gpu=${gpu} exited with ${r.code}:\n${r.stderr}`);
  return JSON.parse(r.stdout.trim().split("\n").at(-1)!) as Answered;
}

describe("llama.cpp builds and the embeddings addon", () => {
  it("the Vulkan build answers with image embeddings exactly as the CPU build does", async () => {
    const [cpu, vulkan] = await Promise.all([answerWith("false"), answerWith("vulkan")]);
    expect(cpu.device).toBe("cpu");
    expect(cpu.libraryPath).not.toMatch(/vulkan/);
    expect(vulkan.device).toMatch(/^vulkan/);
    expect(vulkan.libraryPath).toMatch(/vulkan/);
    expect(cpu.answer).toMatch(/\bred\b/);
    expect(vulkan.answer).toBe(cpu.answer);
  });

  it.runIf(!hardwareGpuPresent().present)(
    "--gpu auto takes the CPU build when the host has no hardware GPU",
    async () => {
      const auto = await answerWith("auto");
      expect(auto.device).toBe("cpu");
      expect(auto.libraryPath).not.toMatch(/vulkan|cuda/);
    },
  );
});
