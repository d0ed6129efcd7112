/**
 * The composed pipeline on real engines: ONNX Runtime (tiny Alpha-CLIP converted from the golden
 * checkpoint), the golden tiny mmproj projector, and llama.cpp with a random 96-wide LLaMA. Random
 * weights: these tests check plumbing, caching and equivalences, not answer quality.
 */
import { readFileSync } from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { isRegionVqaError } from "../src/common/errors.js";
import { maxAbsDiff } from "../src/common/tensor.js";
import {
  createPipeline,
  DEFAULT_CAPTION_PROMPTS,
  type LocalRegionVqaPipeline,
  type PipelineStage,
} from "../src/pipeline/index.js";
import { goldenAlphaClip, tinyModels } from "./support/tiny-models.js";

const image = readFileSync(path.join(goldenAlphaClip, "test_image.png"));
const maskPng = readFileSync(path.join(goldenAlphaClip, "test_mask.png"));

describe("pipeline (tiny real models)", () => {
  let pipeline: LocalRegionVqaPipeline;
  const stages: PipelineStage[] = [];

  beforeAll(async () => {
    const models = await tinyModels();
    pipeline = await createPipeline({
      ...models,
      device: "cpu",
      visionThreads: 1,
      llmThreads: 1,
      maxConversations: 2,
      slotWaitMs: 200,
      onStage: (s) => stages.push(s),
    });
  });
  afterAll(async () => {
    await pipeline?.dispose();
  });

  it("embeds a region, caches it, and a second request skips the encoder", async () => {
    const region = { kind: "box" as const, box: [10, 5, 60, 40] as [number, number, number, number] };
    stages.length = 0;
    const [first] = await pipeline.embedRegions(image, [region]);
    expect(first.count).toBe(36);
    expect(first.data.length).toBe(36 * 96);
    expect(stages).toContain("encode");
    const before = pipeline.stats().cache;
    stages.length = 0;
    const [second] = await pipeline.embedRegions(image, [region]);
    expect(stages).not.toContain("encode");
    expect(pipeline.stats().cache.hits).toBe(before.hits + 1);
    expect(maxAbsDiff(first.data, second.data)).toBe(0);
  });

  it("uses an image the caller already decoded instead of decoding it again", async () => {
    const { decodeImage } = await import("../src/vision/index.js");
    const decoded = await decodeImage(image);
    const region = { kind: "box" as const, box: [3, 3, 50, 30] as [number, number, number, number] };
    stages.length = 0;
    const [given] = await pipeline.embedRegions(image, [region], decoded);
    expect(stages).not.toContain("decode");
    pipeline.clearVisionCache();
    stages.length = 0;
    const [own] = await pipeline.embedRegions(image, [region]);
    expect(stages).toContain("decode");
    expect(maxAbsDiff(given.data, own.data)).toBe(0);
  });

  it("batches several regions in one encoder run, equal to encoding each alone", async () => {
    const regions = [
      { kind: "box" as const, box: [0, 0, 30, 30] as [number, number, number, number] },
      { kind: "box" as const, box: [40, 10, 90, 55] as [number, number, number, number] },
      { kind: "whole" as const },
    ];
    stages.length = 0;
    const batch = await pipeline.embedRegions(image, regions);
    expect(stages.filter((s) => s === "encode")).toHaveLength(1);
    expect(batch).toHaveLength(3);
    // different regions -> different embeddings (the alpha channel reaches the model)
    expect(maxAbsDiff(batch[0].data, batch[1].data)).toBeGreaterThan(1e-3);
    pipeline.clearVisionCache();
    for (let i = 0; i < regions.length; i++) {
      const [alone] = await pipeline.embedRegions(image, [regions[i]]);
      expect(maxAbsDiff(alone.data, batch[i].data)).toBeLessThan(1e-5);
    }
  });

  it("matches the golden projector output for the golden mask (vision + projector end to end)", async () => {
    const { decodeMaskImage } = await import("../src/vision/index.js");
    const mask = await decodeMaskImage(maskPng, 97, 61);
    const [emb] = await pipeline.embedRegions(image, [{ kind: "mask", mask }]);
    const golden = readFileSync(
      path.resolve(goldenAlphaClip, "../llava-projector-tiny/llava_mask_projected.bin"),
    );
    const expected = new Float32Array(golden.buffer, golden.byteOffset, golden.byteLength / 4);
    expect(maxAbsDiff(emb.data, expected)).toBeLessThan(1e-4);
  });

  it("opens a conversation, streams an answer, and continues it by id", async () => {
    const conv = await pipeline.openConversation(image, { kind: "whole" });
    const pieces: string[] = [];
    const stream = conv.ask("What is in the highlighted region?", { maxTokens: 5, temperature: 0 });
    for await (const p of stream) pieces.push(p);
    const result = await stream.result;
    expect(result.completionTokens).toBeGreaterThan(0);
    expect(result.completionTokens).toBeLessThanOrEqual(5);
    expect(pieces.join("")).toBe(result.text);
    expect(pipeline.getConversation(conv.id)).toBe(conv);
    const follow = await pipeline
      .getConversation(conv.id)!
      .ask("And its colour?", { maxTokens: 3, temperature: 0 }).result;
    expect(follow.completionTokens).toBeGreaterThan(0);
    expect(conv.turns).toHaveLength(2);
    await conv.dispose();
    expect(pipeline.getConversation(conv.id)).toBeUndefined();
  });

  it("captions several regions and gives the same caption as asking each alone (greedy)", async () => {
    const regions = [
      { kind: "box" as const, box: [0, 0, 30, 30] as [number, number, number, number] },
      { kind: "whole" as const },
    ];
    const captions = await pipeline.captionRegions(image, regions, { maxTokens: 6, temperature: 0 });
    expect(captions).toHaveLength(2);
    const alone = await pipeline.openConversation(image, regions[0]);
    const a = await alone.ask(DEFAULT_CAPTION_PROMPTS.short, { maxTokens: 6, temperature: 0 }).result;
    await alone.dispose();
    expect(a.text).toBe(captions[0].text);
  });

  it("frees a slot by closing the least recently used idle conversation", async () => {
    const a = await pipeline.openConversation(image, { kind: "whole" });
    const b = await pipeline.openConversation(image, { kind: "whole" });
    await b.ask("Hello?", { maxTokens: 2, temperature: 0 }).result; // b is now more recent than a
    const c = await pipeline.openConversation(image, { kind: "whole" }); // 2 slots: a must go
    expect(pipeline.getConversation(a.id)).toBeUndefined();
    expect(pipeline.getConversation(b.id)).toBe(b);
    expect(pipeline.getConversation(c.id)).toBe(c);
    await b.dispose();
    await c.dispose();
  });

  it("fails fast with overloaded when every slot is answering", async () => {
    const a = await pipeline.openConversation(image, { kind: "whole" });
    const b = await pipeline.openConversation(image, { kind: "whole" });
    // Long answers, stopped once the third conversation has been refused.
    const stop = new AbortController();
    const long = { maxTokens: 400, temperature: 0, stop: [], signal: stop.signal };
    const ra = a.ask("Tell me a long story.", long).result;
    const rb = b.ask("Tell me a long story.", long).result;
    let code = "no error";
    try {
      await pipeline.openConversation(image, { kind: "whole" });
    } catch (err) {
      code = isRegionVqaError(err) ? err.code : String(err);
    }
    stop.abort();
    await Promise.all([ra, rb]);
    expect(code).toBe("overloaded");
    await a.dispose();
    await b.dispose();
  });

  it("a waiting conversation gets the slot of one that finishes answering", async () => {
    const patient = await createPipeline({
      ...(await tinyModels()),
      device: "cpu",
      visionThreads: 1,
      llmThreads: 1,
      maxConversations: 2,
      slotWaitMs: 60_000,
    });
    try {
      const a = await patient.openConversation(image, { kind: "whole" });
      const b = await patient.openConversation(image, { kind: "whole" });
      const stopB = new AbortController();
      const ra = a.ask("Tell me a long story.", { maxTokens: 60, temperature: 0 }).result;
      const rb = b.ask("Tell me a long story.", {
        maxTokens: 400,
        temperature: 0,
        signal: stopB.signal,
      }).result;
      const t0 = Date.now();
      const c = await patient.openConversation(image, { kind: "whole" });
      // a finished first and was evicted for c, long before the 60 s wait limit
      expect(Date.now() - t0).toBeLessThan(30_000);
      expect(patient.getConversation(a.id)).toBeUndefined();
      expect(patient.getConversation(c.id)).toBe(c);
      expect((await ra).finishReason).not.toBe("abort");
      stopB.abort();
      await rb;
    } finally {
      await patient.dispose();
    }
  });

  it("refuses bad input with typed errors", async () => {
    const codeOf = async (p: Promise<unknown>) => {
      try {
        await p;
      } catch (err) {
        if (isRegionVqaError(err)) return err.code;
        throw err;
      }
      return "no error";
    };
    expect(await codeOf(pipeline.openConversation(Buffer.from("not an image"), { kind: "whole" }))).toBe(
      "image_undecodable",
    );
    expect(await codeOf(pipeline.openConversation(image, { kind: "box", box: [5, 5, 5, 9] }))).toBe(
      "box_invalid",
    );
    expect(
      await codeOf(
        pipeline.embedRegions(
          image,
          Array.from({ length: 17 }, () => ({ kind: "whole" as const })),
        ),
      ),
    ).toBe("too_many_regions");
    const conv = await pipeline.openConversation(image, { kind: "whole" });
    expect(() => conv.ask("x".repeat(5000))).toThrow(/limit/);
    await conv.dispose();
  });
});
