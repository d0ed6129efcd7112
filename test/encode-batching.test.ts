/**
 * Regions of several requests in one vision-encoder run (`EncodeBatcher`): the batching rules on a
 * counting encoder function, then the real pipeline (tiny real models, CPU): concurrent requests
 * share runs and get the same embeddings as when each runs alone.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Tensor } from "../src/common/tensor.js";
import { maxAbsDiff } from "../src/common/tensor.js";
import { EncodeBatcher, type BatchInput } from "../src/pipeline/encode-batcher.js";
import { createPipeline, type LocalRegionVqaPipeline } from "../src/pipeline/index.js";
import { makeImage } from "./support/server.js";
import { tinyModels } from "./support/tiny-models.js";

const R = 2;
/** One request: `n` regions of one image whose pixels are all `value`. */
function input(n: number, value: number): BatchInput {
  return {
    pixelValues: { data: new Float32Array(3 * R * R).fill(value), shape: [1, 3, R, R] },
    alpha: { data: new Float32Array(n * R * R).fill(value * 10), shape: [n, 1, R, R] },
  };
}

/** An encoder function that records each run's batch and answers each region with its pixel value and alpha. */
function recorder() {
  const runs: number[] = [];
  const run = async (b: BatchInput) => {
    const n = b.alpha.shape[0];
    runs.push(n);
    await new Promise((r) => setTimeout(r, 5));
    const out: Tensor = { data: new Float32Array(n * 2), shape: [n, 2] };
    for (let i = 0; i < n; i++) {
      const image = b.pixelValues.shape[0] === 1 ? 0 : i;
      out.data[2 * i] = b.pixelValues.data[image * 3 * R * R];
      out.data[2 * i + 1] = b.alpha.data[i * R * R];
    }
    return { projected: out };
  };
  return { runs, run };
}

describe("EncodeBatcher", () => {
  it("requests that wait behind a run go together, each gets its own regions back", async () => {
    const { runs, run } = recorder();
    const batcher = new EncodeBatcher(run, { maxRegions: 8, maxWaitMs: 0 });
    const results = await Promise.all([1, 2, 3, 4].map((v) => batcher.submit(input(v === 2 ? 3 : 1, v))));
    // The first runs at once; the three that queued behind it share the second run (1 + 3 + 1 + 1 regions).
    expect(runs).toEqual([1, 5]);
    results.forEach((r, i) => {
      const v = i + 1;
      const n = v === 2 ? 3 : 1;
      expect(r.projected!.shape).toEqual([n, 2]);
      for (let k = 0; k < n; k++)
        expect([r.projected!.data[2 * k], r.projected!.data[2 * k + 1]]).toEqual([v, v * 10]);
    });
    expect(batcher.stats()).toEqual({ runs: 2, requests: 4, regions: 6 });
  });

  it("maxWaitMs lets the first request wait for company; maxRegions bounds a batch; 1 = no batching", async () => {
    const waiting = recorder();
    const batcher = new EncodeBatcher(waiting.run, { maxRegions: 3, maxWaitMs: 30 });
    await Promise.all([1, 2, 3, 4, 5].map((v) => batcher.submit(input(1, v))));
    expect(waiting.runs).toEqual([3, 2]);
    const alone = recorder();
    const off = new EncodeBatcher(alone.run, { maxRegions: 1, maxWaitMs: 0 });
    await Promise.all([1, 2, 3].map((v) => off.submit(input(1, v))));
    expect(alone.runs).toEqual([1, 1, 1]);
    // A request with more regions than maxRegions still runs, whole.
    const big = recorder();
    await new EncodeBatcher(big.run, { maxRegions: 2, maxWaitMs: 0 }).submit(input(5, 1));
    expect(big.runs).toEqual([5]);
  });

  it("a failed run fails every request in it, and the next batch still runs", async () => {
    let calls = 0;
    const batcher = new EncodeBatcher(
      async (b) => {
        calls++;
        await new Promise((r) => setTimeout(r, 5));
        if (calls === 2) throw new Error("boom");
        return { projected: { data: new Float32Array(b.alpha.shape[0]), shape: [b.alpha.shape[0], 1] } };
      },
      { maxRegions: 4, maxWaitMs: 0 },
    );
    const outcomes = await Promise.allSettled([1, 2, 3].map((v) => batcher.submit(input(1, v))));
    expect(outcomes.map((o) => o.status)).toEqual(["fulfilled", "rejected", "rejected"]);
    await expect(batcher.submit(input(1, 9))).resolves.toBeDefined();
    expect(() => new EncodeBatcher(async () => ({}), { maxRegions: 0, maxWaitMs: 0 })).toThrow(/maxRegions/);
  });
});

describe("encoder batching in the real pipeline", () => {
  let batched: LocalRegionVqaPipeline;
  let alone: LocalRegionVqaPipeline;
  let images: Buffer[];
  beforeAll(async () => {
    const models = await tinyModels();
    const common = {
      ...models,
      device: "cpu" as const,
      gpu: false as const,
      visionThreads: 1,
      contextSize: 512,
    };
    batched = await createPipeline({ ...common, encoderBatch: { maxRegions: 8, maxWaitMs: 50 } });
    alone = await createPipeline(common);
    images = await Promise.all([40, 48, 56, 64].map((w) => makeImage(w, 40)));
  });
  afterAll(async () => {
    await batched?.dispose();
    await alone?.dispose();
  });

  it("concurrent requests share encoder runs and get the embeddings they get alone", async () => {
    const regions = [
      { kind: "whole" as const },
      { kind: "box" as const, box: [2, 2, 30, 30] as [number, number, number, number] },
    ];
    const together = await Promise.all(images.map((png) => batched.embedRegions(png, regions)));
    const stats = batched.stats().encoder!;
    expect(stats.requests).toBe(4);
    expect(stats.regions).toBe(8);
    expect(stats.runs).toBeLessThan(4);
    expect(alone.stats().encoder!.runs).toBe(0);
    for (let i = 0; i < images.length; i++) {
      const single = await alone.embedRegions(images[i], regions);
      together[i].forEach((block, k) => {
        expect(block.count).toBe(single[k].count);
        expect(maxAbsDiff(block.data, single[k].data)).toBeLessThan(1e-5);
      });
    }
    // Batching is off on the CPU by default: one run per request.
    expect(alone.stats().encoder).toEqual({ runs: 4, requests: 4, regions: 8 });
  });
});
