/**
 * The idle-conversation sweep on real engines (tiny Alpha-CLIP, golden tiny mmproj, random 96-wide
 * LLaMA): a conversation that is answering is never "idle", however long its answer takes.
 */
import { readFileSync } from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createPipeline, type LocalRegionVqaPipeline } from "../src/pipeline/index.js";
import { goldenAlphaClip, tinyModels } from "./support/tiny-models.js";

const image = readFileSync(path.join(goldenAlphaClip, "test_image.png"));

describe("pipeline idle sweep (tiny real models)", () => {
  let pipeline: LocalRegionVqaPipeline;
  const ttlMs = 20;

  beforeAll(async () => {
    const models = await tinyModels();
    pipeline = await createPipeline({
      ...models,
      device: "cpu",
      visionThreads: 1,
      llmThreads: 1,
      maxConversations: 1,
      conversationTtlMs: ttlMs,
    });
  });
  afterAll(async () => {
    await pipeline?.dispose();
  });

  it("does not close a conversation while it answers for longer than the idle limit", async () => {
    const conv = await pipeline.openConversation(image, { kind: "whole" });
    const t0 = performance.now();
    // The second question waits behind the first, so the conversation stays busy all along.
    const first = conv.ask("Describe it.", { maxTokens: 400, temperature: 0 }).result;
    const second = conv.ask("And again?", { maxTokens: 400, temperature: 0 }).result;
    const [a, b] = await Promise.all([first, second]);
    const busyMs = performance.now() - t0;
    // The test only means something when answering outlasted several sweeps.
    expect(busyMs).toBeGreaterThan(5 * ttlMs);
    expect(a.completionTokens).toBeGreaterThan(0);
    expect(b.completionTokens).toBeGreaterThan(0);
    expect(conv.turns).toHaveLength(2);
    // Idle now: the sweep closes it soon after.
    await new Promise((r) => setTimeout(r, 6 * ttlMs));
    expect(pipeline.getConversation(conv.id)).toBeUndefined();
  });
});
