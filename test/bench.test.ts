/**
 * The benchmark harness on the real tiny models (real ONNX sessions, real llama.cpp, real HTTP on
 * loopback): the numbers are not asserted (they depend on the machine), what they claim is: a cold run
 * encodes, a warm run is answered by the vision cache without the encoder, a follow-up runs no image
 * stage, every concurrent request is about a new image, the segmenter bench's further clicks are
 * answered from the embedding cache, and the classify bench's warm runs encode no text (its cold runs
 * encode exactly the labels asked, on the bundled model's CLIP text tower).
 */
import path from "node:path";
import { describe, expect, it } from "vitest";
import { benchLabels, onnxParameters, runClassifyBench } from "../bench/classify.js";
import { clusterPrerequisites, parseRedisBenchmark, runClusterBench } from "../bench/cluster.js";
import { runConcurrencyBench } from "../bench/concurrency.js";
import { benchImage } from "../bench/images.js";
import { resolveModelSet } from "../bench/model-sets.js";
import { runPipelineBench } from "../bench/pipeline.js";
import {
  classifyTable,
  clusterTables,
  concurrencyTable,
  pipelineTable,
  segmenterTable,
} from "../bench/report.js";
import { hieraTinyEncoderMacs, miniSamMacs, runSegmenterBench } from "../bench/segmenter.js";
import { metricSum, parseMetrics, quantile, round, spread } from "../bench/stats.js";
import { SAM21_TINY_SHAPED_ARCHITECTURE } from "../src/segmenter/index.js";
import { instantEncoder, instantLlm } from "../bench/instant-engines.js";
import { LocalRegionVqaPipeline } from "../src/pipeline/index.js";
import { makeImage } from "./support/server.js";
import { alive } from "./support/processes.js";

const engine = {
  maxTokens: 4,
  visionThreads: 1,
  llmThreads: 1,
  device: "cpu" as const,
  gpu: false as const,
  contextSize: 1024,
};
const quiet = (): void => undefined;

describe("bench statistics", () => {
  it("interpolates quantiles between order statistics", () => {
    expect(quantile([4, 1, 3, 2], 0.5)).toBe(2.5);
    expect(quantile([10, 20], 0.95)).toBeCloseTo(19.5);
    expect(quantile([7], 0.99)).toBe(7);
    expect(Number.isNaN(quantile([], 0.5))).toBe(true);
    expect(round(NaN)).toBeNull();
    expect(round(1.26, 1)).toBe(1.3);
    expect(spread([5, 1, 3, 2, 4])).toEqual({ median: 3, p90: 4.6 });
    expect(spread([])).toEqual({ median: null, p90: null });
  });

  it("reads Prometheus text and redis-benchmark's quiet output", () => {
    const samples = parseMetrics(
      [
        "# HELP region_vqa_conversation_turns_total Questions",
        "# TYPE region_vqa_conversation_turns_total counter",
        'region_vqa_conversation_turns_total{kv="new"} 3',
        'region_vqa_conversation_turns_total{kv="rebuilt"} 2',
        'region_vqa_shared_state_command_duration_seconds_bucket{le="+Inf",op="feature_get"} 4',
        'region_vqa_shared_state_command_duration_seconds_sum{op="feature_get"} 0.0036822090000005',
        "region_vqa_shared_state_up 1",
      ].join("\n"),
    );
    expect(samples).toHaveLength(5);
    expect(metricSum(samples, "region_vqa_conversation_turns_total")).toBe(5);
    expect(metricSum(samples, "region_vqa_conversation_turns_total", { kv: "rebuilt" })).toBe(2);
    expect(metricSum(samples, "region_vqa_conversation_turns_total", { kv: "reused" })).toBe(0);
    expect(samples[2].labels).toEqual({ le: "+Inf", op: "feature_get" });
    expect(metricSum(samples, "region_vqa_shared_state_command_duration_seconds_sum")).toBeCloseTo(0.00368);
    expect(
      parseRedisBenchmark(
        "SET: rps=0.0 (overall: nan) avg_msec=nan (overall: nan)\r" +
          "SET: 153846.16 requests per second, p50=0.183 msec\n" +
          "GET: 143884.89 requests per second, p50=0.175 msec\n",
      ),
    ).toEqual([
      { test: "SET", requestsPerSecond: 153846.16, p50Ms: 0.183 },
      { test: "GET", requestsPerSecond: 143884.89, p50Ms: 0.175 },
    ]);
  });

  it("makes a different image per seed, with the box inside it", async () => {
    const [a, b] = await Promise.all([benchImage(1), benchImage(2)]);
    expect(a.png.equals(b.png)).toBe(false);
    for (const img of [a, b]) {
      const [x1, y1, x2, y2] = img.box;
      expect(x1).toBeGreaterThanOrEqual(0);
      expect(y1).toBeGreaterThanOrEqual(0);
      expect(x2).toBeLessThanOrEqual(img.width);
      expect(y2).toBeLessThanOrEqual(img.height);
      expect(x2).toBeGreaterThan(x1);
    }
  });
});

describe("bench on the tiny models", () => {
  it("pipeline: cold encodes, warm hits the cache and skips the encoder, follow-up runs no image stage", async () => {
    const models = await resolveModelSet("tiny", { fullLayers: 1, threads: 1 });
    const result = await runPipelineBench(models, { ...engine, repeats: 2 }, quiet);
    const [cold, warm, followUp] = result.scenarios;
    expect(cold.scenario).toBe("cold");
    expect(cold.encoderRuns).toBe(2);
    expect(cold.cacheMisses).toBe(2);
    expect(cold.cacheHits).toBe(0);
    expect(cold.stagesMs.encode).toBeGreaterThan(0);
    expect(warm.encoderRuns).toBe(0);
    expect(warm.cacheHits).toBe(2);
    expect(warm.cacheMisses).toBe(0);
    expect(warm.stagesMs.encode).toBeNull();
    expect(warm.stagesMs.project).toBeNull();
    expect(warm.stagesMs.prefill).toBeGreaterThan(0);
    expect(followUp.stagesMs.decode).toBeNull();
    expect(followUp.stagesMs.prefill).toBeNull();
    expect(followUp.cacheHits + followUp.cacheMisses).toBe(0);
    expect(result.followUpOverColdTtft).toBeGreaterThan(0);
    expect(pipelineTable(result)).toContain("| cold |");
  }, 120_000);

  // Level 1 leaves 3 idle conversations in the 3 slots; level 3's new questions must evict them.
  it("concurrency: real HTTP requests, each about a new image", async () => {
    const models = await resolveModelSet("tiny", { fullLayers: 1, threads: 1 });
    const result = await runConcurrencyBench(
      models,
      { ...engine, endpoint: "ask", levels: [1, 3], seconds: 30, maxRequests: 3, maxConversations: 3 },
      quiet,
    );
    expect(result.levels.map((l) => l.clients)).toEqual([1, 3]);
    for (const level of result.levels) {
      expect(level.errors).toBe(0);
      expect(level.requests).toBe(3);
      expect(level.cacheHits).toBe(0);
      expect(level.latencyMs.p50).toBeGreaterThan(0);
      expect(level.latencyMs.p99).toBeGreaterThanOrEqual(level.latencyMs.p50!);
      expect(level.peakRssMiB).toBeGreaterThan(0);
    }
    expect(concurrencyTable(result)).toContain("| 3 | 3 | 0 |");
  }, 120_000);

  it("concurrency on the caption endpoint", async () => {
    const models = await resolveModelSet("tiny", { fullLayers: 1, threads: 1 });
    const result = await runConcurrencyBench(
      models,
      { ...engine, endpoint: "caption", levels: [2], seconds: 30, maxRequests: 2, maxConversations: 1 },
      quiet,
    );
    expect(result.endpoint).toContain("/v1/regions/caption");
    expect(result.levels[0]).toMatchObject({ clients: 2, requests: 2, errors: 0, cacheHits: 0 });
  }, 120_000);
});

describe("segmenter bench", () => {
  it("the ceiling's instant engines run the real pipeline with the real shapes (576 x 4096 per region)", async () => {
    const encoder = instantEncoder();
    const pipeline = LocalRegionVqaPipeline.fromEngines(
      { maxConversations: 2 },
      { encoder, llm: instantLlm(2) },
    );
    try {
      const image = await makeImage(64, 48);
      const [block] = await pipeline.embedRegions(image, [{ kind: "box", box: [4, 4, 30, 30] }]);
      expect([block.count, block.data.length / block.count]).toEqual([576, 4096]);
      expect(block.imageEmbed?.length).toBe(768);
      const conversation = await pipeline.openConversation(image, { kind: "box", box: [4, 4, 30, 30] });
      const result = await conversation.ask("What colour is it?", { maxTokens: 6 }).result;
      expect(result.completionTokens).toBe(6);
      expect(result.promptTokens).toBeGreaterThan(576);
      await conversation.dispose();
      // The second open found the region in the vision cache: one encoder run for two requests.
      expect(encoder.runs).toBe(1);
      expect(pipeline.stats().encoder).toEqual({ runs: 1, requests: 1, regions: 1 });
    } finally {
      await pipeline.dispose();
    }
  });

  it("counts the SAM 2.1-shaped stand-in's multiply-accumulates from its conv shapes", () => {
    const macs = miniSamMacs(SAM21_TINY_SHAPED_ARCHITECTURE);
    expect(macs.uncounted).toEqual([]);
    // encoder.c0a: 3 -> 32 channels, 3x3, stride 4 to 256 x 256.
    expect(macs.encoder).toBeGreaterThan(256 * 256 * 32 * 3 * 9);
    expect(macs.decoder).toBeGreaterThan(0);
    expect(hieraTinyEncoderMacs()).toBeGreaterThan(10 * macs.encoder);
  });

  // Quick mode: one image per row and one further click; asserts the table's rows, never times.
  it("times both segmenters and Alpha-CLIP, the further clicks from cached embeddings", async () => {
    const result = await runSegmenterBench({ threads: 1, images: 1, clicks: 1, photo: true }, quiet);
    expect(result.models.map((m) => m.key)).toEqual(["bundled", "sam21-tiny-shaped"]);
    expect(result.models.map((m) => m.rows.map((r) => r.images))).toEqual([
      ["shapes scenes"],
      ["shapes scenes", "photo 1024x768"],
    ]);
    const standIn = result.models[1];
    expect(standIn.imageSize).toBe(1024);
    expect(standIn.maskSize).toBe(256);
    expect(standIn.embeddings).toEqual(["32x256x256", "64x128x128", "256x64x64"]);
    for (const model of result.models) {
      expect(model.loadMs).toBeGreaterThan(0);
      for (const row of model.rows) {
        expect(row.imageCount).toBe(1);
        expect(row.furtherClicks.count).toBe(1);
        // An untrained stand-in may find an empty mask; a click it answers must hit the cache.
        expect(row.furtherClicks.cached + row.emptyMasks).toBeGreaterThanOrEqual(1);
        expect(row.alphaClip.encodeMs).toBeGreaterThan(0);
      }
    }
    expect(standIn.rows[0].embeddingBytesPerImage).toBe(
      (32 * 256 * 256 + 64 * 128 * 128 + 256 * 64 * 64) * 4,
    );
    const table = segmenterTable(result);
    expect(table).toContain("| bundled | shapes scenes");
    expect(table).toContain("| sam21-tiny-shaped | shapes scenes");
    expect(table).toContain("| sam21-tiny-shaped | photo 1024x768");
    expect(table).toContain("not its compute");
    expect(table).toContain("1 thread(s)");
  }, 180_000);
});

describe("classify bench", () => {
  it("makes distinct labels, the 24 colour-shape ones first", () => {
    const labels = benchLabels(1000);
    expect(labels).toHaveLength(1000);
    expect(new Set(labels).size).toBe(1000);
    expect(labels.slice(0, 2)).toEqual(["red circle", "red square"]);
    expect(labels[24]).toBe("red circle number 24");
    expect(benchLabels(3)).toEqual(labels.slice(0, 3));
  });

  // Quick mode: one run per row, 1 and 3 labels, 2 templates; asserts what was encoded, never times.
  it("cold runs encode exactly the labels asked, new-image and warm runs encode no text", async () => {
    const result = await runClassifyBench(
      { threads: 1, repeats: 1, labelCounts: [1, 3], templates: 2 },
      quiet,
    );
    const t = result.textModel;
    expect(t.dir).toMatch(/models\/shapes\/text$/);
    // CLIP's text tower: embeddings, blocks (attention + MLP + two layer norms), final norm, projection.
    const perBlock = 2 * t.width + 3 * t.width * t.width + 3 * t.width + t.width * t.width + t.width;
    const mlp = 2 * t.width + 2 * 4 * t.width * t.width + 4 * t.width + t.width;
    expect(t.parameters).toBe(
      t.vocabSize * t.width +
        t.contextLength * t.width +
        t.layers * (perBlock + mlp) +
        2 * t.width +
        t.width * t.embedDim,
    );
    expect(await onnxParameters(path.join(t.dir, "model.onnx"))).toBe(t.parameters);
    expect(result.encode.map((e) => e.labels)).toEqual([1, 3]);
    for (const e of result.encode) {
      expect(e.onnxRuns).toBe(1);
      expect(e.meanTokens).toBeGreaterThan(2);
      expect(e.perLabelMs.median).toBeGreaterThan(0);
    }
    expect(result.classify.map((c) => [c.labels, c.templates, c.scenario])).toEqual([
      [1, 1, "cold"],
      [1, 1, "new image"],
      [1, 1, "warm"],
      [3, 1, "cold"],
      [3, 1, "new image"],
      [3, 1, "warm"],
      [3, 2, "cold"],
      [3, 2, "new image"],
      [3, 2, "warm"],
    ]);
    for (const c of result.classify) {
      const texts = c.labels * c.templates * c.runs;
      expect(c.runs).toBe(1);
      expect(c.totalMs.median).toBeGreaterThan(0);
      if (c.scenario === "cold") {
        expect(c).toMatchObject({
          textEncoded: texts,
          textCached: 0,
          textCacheMisses: texts,
          textOnnxRuns: 1,
        });
      } else {
        expect(c).toMatchObject({ textEncoded: 0, textCached: texts, textCacheMisses: 0, textOnnxRuns: 0 });
      }
      if (c.scenario === "warm") {
        expect(c).toMatchObject({ visionEncoderRuns: 0, visionCacheHits: 1, visionCacheMisses: 0 });
      } else {
        // A new image each time: the vision cache never answers.
        expect(c).toMatchObject({ visionEncoderRuns: 1, visionCacheHits: 0, visionCacheMisses: 1 });
      }
    }
    expect(result.textCache).toMatchObject({ labels: 3, entries: 3, bytes: 3 * t.embedDim * 4 });
    expect(result.peakRssMiB).toBeGreaterThan(0);
    const table = classifyTable(result);
    expect(table).toContain("| 3 | 2 | warm |");
    // The encoding row of 3 labels: one ONNX run.
    expect(table).toMatch(/\| 3 \| [\d.]+ \| 1 \| \*\*/);
    expect(table).toContain("3.28 M parameters");
    expect(table).toContain("1 intra-op thread(s)");
  }, 180_000);
});

// Real processes (deploy/local-cluster.sh: redis-server, HAProxy, replicas of `region-vqa serve` on the
// bundled model); about 20 s. Asserts what the tables claim, never a time.
describe.skipIf(clusterPrerequisites().length > 0)("cluster bench", () => {
  it("rebuilt follow-ups answer as the owner does, failover rebuilds, Redis commands are counted, nothing is left running", async () => {
    const result = await runClusterBench(
      {
        levels: [2],
        requests: 4,
        seconds: 60,
        maxTokens: 16,
        threads: 1,
        llmThreads: 1,
        histories: [1, 3],
        repeats: 2,
        commandSamples: 2,
        failover: true,
        redisBenchmark: false,
        readyTimeoutS: 120,
      },
      quiet,
    );
    expect(result.setups.map((s) => s.key)).toEqual(["baseline", "replicas-1", "replicas-2"]);
    for (const setup of result.setups) {
      const [level] = setup.levels;
      expect(level).toMatchObject({ clients: 2, requests: 4, errors: 0, encoderRuns: 4, visionCacheHits: 0 });
      expect(level.p90Ms).toBeGreaterThanOrEqual(level.latencyMs.p50!);
      expect(Object.keys(level.perReplica).sort()).toEqual(
        setup.key === "baseline"
          ? ["baseline"]
          : setup.key === "replicas-1"
            ? ["replica-1"]
            : ["replica-1", "replica-2"],
      );
      expect(setup.redisDuringLoad === undefined).toBe(setup.key === "baseline");
      // The script, redis-server, HAProxy and the replicas (or the one plain server): all stopped.
      expect(setup.pids.length).toBe(setup.key === "baseline" ? 1 : 3 + setup.replicas);
      for (const pid of setup.pids) expect(alive(pid), `pid ${pid} still running`).toBe(false);
    }
    expect(result.rebuild.map((r) => r.history)).toEqual([1, 3]);
    for (const row of result.rebuild) {
      expect(row).toMatchObject({ conversations: 2, answersEqual: 2, kv: { reused: 2, rebuilt: 2 } });
      expect(row.rebuildStageMs.median).toBeGreaterThan(0);
      expect(row.rebuildPrefillMs.median).toBeGreaterThan(0);
      expect(row.rebuildStageMs.median!).toBeGreaterThanOrEqual(row.rebuildPrefillMs.median!);
    }
    // Three more previous turns: more prompt tokens to prefill on the rebuild.
    expect(result.rebuild[1].promptTokens!).toBeGreaterThan(result.rebuild[0].promptTokens!);
    expect(result.failover).toMatchObject({
      afterKill: { status: 200, turns: 4 },
      rebuilt: 1,
      answerEqualsReference: true,
      next: { status: 200 },
    });
    expect(result.failover!.afterKill.replica).toBe(result.failover!.survivor);
    expect(result.failover!.next.replica).toBe(result.failover!.survivor);
    expect(result.redis.perKind).toEqual([
      {
        kind: "first question (new image)",
        requests: 2,
        commands: { feature_get: 1, feature_set: 1, transcript_set: 1 },
        kv: { new: 1 },
      },
      {
        kind: "follow-up, KV cache on this replica",
        requests: 2,
        // The transcript is read to check that no other replica continued the conversation since.
        commands: { transcript_get: 1, transcript_set: 1 },
        kv: { reused: 1 },
      },
      {
        kind: "follow-up, rebuilt from Redis on another replica",
        requests: 4,
        commands: { feature_get: 1, transcript_get: 1, transcript_set: 1 },
        kv: { rebuilt: 1 },
      },
    ]);
    expect(result.redis.idle.transcript_set.meanMs).toBeGreaterThan(0);
    expect(result.redis.valueBytes.feature).toBeGreaterThan(result.redis.valueBytes.transcript!);
    const tables = clusterTables(result);
    expect(tables).toContain("| 2 replicas + HAProxy + Redis | 2 | 4 | 0 |");
    expect(tables).toMatch(/\| 3 \| 2 \| \d+ \| \*\*[\d.]+ \/ [\d.]+\*\* \|/);
    expect(tables).toContain(
      "| follow-up, rebuilt from Redis on another replica | 4 | rebuilt 1 | 1 | 0 | 1 | 1 | 3 | 3 |",
    );
  }, 180_000);
});
