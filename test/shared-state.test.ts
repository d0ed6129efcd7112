/**
 * The shared state (src/shared-state) against a real redis-server started on a loopback port: the
 * byte format of shared embeddings and what it refuses, transcripts, deadlines when Redis is gone or
 * stalls, and two real pipelines on the bundled model sharing one Redis (one encodes, the other reads;
 * one converses, the other continues the conversation and answers as the first one does).
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { createServer } from "node:net";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import path from "node:path";
import { pointSceneImage, pointSceneMasks, redCentre } from "./support/point-scene.js";
import { repoRoot } from "./support/tiny-models.js";
import { resolveModelOptions } from "../src/models/index.js";
import { createPipeline, type LocalRegionVqaPipeline } from "../src/pipeline/index.js";
import { SamSegmenter } from "../src/segmenter/index.js";
import { encodePng, generateScene, maskIou, objectBox, renderScene } from "../src/shapes/index.js";
import {
  decodeBundle,
  decodeEmbeddings,
  encodeBundle,
  encodeEmbeddings,
  RedisSharedState,
  roundForSharing,
  type SharedStateOp,
  type SharedStateResult,
} from "../src/shared-state/index.js";

const haveRedis = spawnSync("sh", ["-c", "command -v redis-server"]).status === 0;
if (process.env.CI === "true" && !haveRedis) {
  throw new Error("CI must run the shared-state tests: redis-server is installed by scripts/setup.sh");
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

async function startRedis(port: number): Promise<ChildProcess> {
  const child = spawn(
    "redis-server",
    ["--bind", "127.0.0.1", "--port", String(port), "--save", "", "--enable-debug-command", "local"],
    { stdio: "ignore" },
  );
  for (let i = 0; i < 100; i++) {
    const probe = new Redis({ port, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
    probe.on("error", () => undefined);
    const ok = await probe
      .connect()
      .then(() => probe.ping())
      .then(
        () => true,
        () => false,
      );
    probe.disconnect();
    if (ok) return child;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error("redis-server did not start");
}

const values = (n: number, scale = 1) =>
  Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.37) * scale);

describe("shared embeddings: byte format", () => {
  const value = { data: values(64 * 32, 3), count: 64, imageEmbed: values(16) };

  it("round-trips fp32 exactly and fp16 to the values roundForSharing gives", () => {
    const back32 = decodeEmbeddings("k", encodeEmbeddings("k", value, "fp32"));
    expect(back32.ok && Array.from(back32.value.data)).toEqual(Array.from(value.data));
    expect(back32.ok && Array.from(back32.value.imageEmbed!)).toEqual(Array.from(value.imageEmbed));
    const bytes16 = encodeEmbeddings("k", value, "fp16");
    expect(bytes16.length).toBeLessThan(encodeEmbeddings("k", value, "fp32").length * 0.6);
    const back16 = decodeEmbeddings("k", bytes16);
    const rounded = roundForSharing(value, "fp16");
    expect(back16.ok && back16.value.count).toBe(64);
    expect(back16.ok && Array.from(back16.value.data)).toEqual(Array.from(rounded.data));
    expect(back16.ok && Array.from(back16.value.imageEmbed!)).toEqual(Array.from(rounded.imageEmbed!));
    // Rounding is real (fp16 keeps ~3 digits) but small.
    expect(Array.from(rounded.data)).not.toEqual(Array.from(value.data));
    rounded.data.forEach((v, i) => expect(Math.abs(v - value.data[i])).toBeLessThan(3e-3));
  });

  it("keeps values beyond fp16's range as fp32 (and does not round them)", () => {
    const big = { data: Float32Array.from([1, 70000, -3]), count: 1 };
    expect(roundForSharing(big, "fp16")).toBe(big);
    const back = decodeEmbeddings("k", encodeEmbeddings("k", big, "fp16"));
    expect(back.ok && Array.from(back.value.data)).toEqual([1, 70000, -3]);
  });

  it("holds any named tensors with metadata (a segmenter's image embeddings and their frame)", () => {
    const bundle = {
      meta: { width: 240, height: 180, resizedWidth: 256, resizedHeight: 256, inputSize: 256 },
      tensors: [
        { name: "image_embeddings.0", shape: [1, 8, 16, 16], data: values(8 * 16 * 16) },
        { name: "image_embeddings.1", shape: [1, 4, 8], data: values(32, 2) },
      ],
    };
    const back = decodeBundle("img", encodeBundle("img", bundle, "fp32"));
    expect(back.ok && back.value.meta).toEqual(bundle.meta);
    expect(back.ok && back.value.tensors.map((t) => [t.name, t.shape])).toEqual([
      ["image_embeddings.0", [1, 8, 16, 16]],
      ["image_embeddings.1", [1, 4, 8]],
    ]);
    expect(back.ok && Array.from(back.value.tensors[1].data)).toEqual(Array.from(bundle.tensors[1].data));
    // A region-embeddings reader refuses a bundle of other tensors.
    const asRegion = decodeEmbeddings("img", encodeBundle("img", bundle, "fp16"));
    expect(asRegion.ok ? "accepted" : asRegion.reason).toBe("not region embeddings");
  });

  it("refuses corrupt, truncated, foreign and other-version entries", () => {
    const good = encodeEmbeddings("key-a", value, "fp16");
    const reason = (bytes: Buffer, key = "key-a") => {
      const r = decodeEmbeddings(key, bytes);
      return r.ok ? "accepted" : r.reason;
    };
    expect(reason(good)).toBe("accepted");
    const flipped = Buffer.from(good);
    flipped[60] ^= 0x40;
    expect(reason(flipped)).toBe("checksum");
    expect(reason(good.subarray(0, good.length - 10))).not.toBe("accepted");
    expect(reason(good, "key-b")).toBe("written under another key");
    expect(reason(Buffer.from("some other program's value, long enough to have a header's length"))).toBe(
      "not a region-vqa entry",
    );
    const otherVersion = Buffer.from(good);
    otherVersion[4] = 2;
    expect(reason(otherVersion)).toBe("format version 2");
    expect(reason(Buffer.alloc(10))).toBe("too short");
  });
});

describe.skipIf(!haveRedis)("RedisSharedState on a real redis-server", () => {
  let port: number;
  let redis: ChildProcess;
  let raw: Redis;
  const commands: Array<[SharedStateOp, SharedStateResult]> = [];
  let shared: RedisSharedState;

  beforeAll(async () => {
    port = await freePort();
    redis = await startRedis(port);
    raw = new Redis({ port });
    shared = new RedisSharedState({
      url: `redis://127.0.0.1:${port}`,
      keyPrefix: "t:",
      featureTtlMs: 60_000,
      onCommand: (op, result) => commands.push([op, result]),
    });
    await shared.connect();
  });

  afterAll(async () => {
    await shared?.close();
    raw?.disconnect();
    redis?.kill("SIGKILL");
  });

  it("shares embeddings with a TTL, and reads misses as undefined", async () => {
    const value = { data: values(16), count: 4 };
    await shared.putFeatures("img:mask", value);
    const [hit, miss] = await shared.getFeatures(["img:mask", "img:other"]);
    expect(hit && Array.from(hit.data)).toEqual(Array.from(roundForSharing(value, "fp16").data));
    expect(miss).toBeUndefined();
    const ttl = await raw.pttl("t:features:img:mask");
    expect(ttl).toBeGreaterThan(50_000);
    expect(ttl).toBeLessThanOrEqual(60_000);
    expect(shared.status().state).toBe("ok");
  });

  it("ignores a corrupt or foreign value under its key (counted as rejected)", async () => {
    await raw.set("t:features:bad", "not embeddings");
    const copy = await raw.getBuffer("t:features:img:mask");
    await raw.set("t:features:copied", copy!);
    commands.length = 0;
    expect(await shared.getFeatures(["bad", "copied"])).toEqual([undefined, undefined]);
    expect(commands.filter(([, r]) => r === "rejected")).toHaveLength(2);
  });

  it("stores transcripts and refuses malformed ones", async () => {
    const transcript = {
      version: 1 as const,
      id: "conv_1",
      models: "m",
      featureKey: "img:mask",
      turns: [{ question: "q?", answer: "a." }],
      updatedAt: new Date().toISOString(),
    };
    await shared.putTranscript(transcript);
    expect(await shared.getTranscript("conv_1")).toEqual(transcript);
    await raw.set("t:conversation:conv_2", JSON.stringify({ ...transcript, id: "conv_1" }));
    expect(await shared.getTranscript("conv_2")).toBeUndefined();
    await raw.set(
      "t:conversation:conv_3",
      JSON.stringify({ ...transcript, id: "conv_3", turns: [{ question: 1 }] }),
    );
    expect(await shared.getTranscript("conv_3")).toBeUndefined();
    await shared.deleteTranscript("conv_1");
    expect(await shared.getTranscript("conv_1")).toBeUndefined();
  });

  it("never waits long for a stalled Redis: the command times out, the state is degraded, then recovers", async () => {
    const blocker = new Redis({ port });
    const stall = blocker.call("DEBUG", "SLEEP", "1.5");
    await new Promise((r) => setTimeout(r, 50));
    const t0 = performance.now();
    expect(await shared.getFeatures(["img:mask"])).toEqual([undefined]);
    expect(performance.now() - t0).toBeLessThan(1000);
    expect(shared.status().state).toBe("degraded");
    await stall;
    blocker.disconnect();
    let state = shared.status().state;
    for (let i = 0; i < 60 && state !== "ok"; i++) {
      await shared.getFeatures(["img:mask"]);
      state = shared.status().state;
      if (state !== "ok") await new Promise((r) => setTimeout(r, 100));
    }
    expect(state).toBe("ok");
  });

  it("shares a segmenter's image embeddings: the second replica's click runs no encoder and gives the same mask", async () => {
    const dir = path.join(repoRoot, "models", "shapes", "segmenter");
    const other = new RedisSharedState({ url: `redis://127.0.0.1:${port}`, keyPrefix: "t:" });
    await other.connect();
    const lookups: boolean[] = [];
    const [a, b] = await Promise.all([
      SamSegmenter.load(dir, { device: "cpu", threads: 1, shared: shared }),
      SamSegmenter.load(dir, {
        device: "cpu",
        threads: 1,
        shared: other,
        onSharedLookup: (h) => lookups.push(h),
      }),
    ]);
    try {
      const prompt = { points: [{ x: redCentre[0], y: redCentre[1], label: 1 as const }] };
      const first = await a.segment(pointSceneImage, prompt);
      expect(first.timings.embeddingsCached).toBe(false);
      await a.dispose(); // waits for its background write to Redis
      const second = await b.segment(pointSceneImage, prompt);
      expect(second.timings.embeddingsCached).toBe(true);
      expect(lookups).toEqual([true]);
      expect(second.score).toBe(first.score);
      expect(maskIou(second.mask, first.mask)).toBe(1);
      expect(maskIou(second.mask, pointSceneMasks[0])).toBeGreaterThan(0.9);
      expect((await raw.keys("t:segmenter:*")).length).toBe(1);
    } finally {
      await b.dispose();
      await other.close();
    }
  }, 60_000);

  it("answers at once when nothing listens on the Redis port", async () => {
    const nobody = new RedisSharedState({ url: `redis://127.0.0.1:${await freePort()}` });
    await nobody.connect();
    const t0 = performance.now();
    expect(await nobody.getFeatures(["x"])).toEqual([undefined]);
    expect(await nobody.getTranscript("conv_x")).toBeUndefined();
    await nobody.putTranscript({
      version: 1,
      id: "conv_x",
      models: "m",
      featureKey: "k",
      turns: [],
      updatedAt: "",
    });
    // Three commands that each waited for the 250 ms deadline would take 750 ms.
    expect(performance.now() - t0).toBeLessThan(600);
    expect(nobody.status()).toMatchObject({ state: "degraded" });
    await nobody.close();
  });
});

describe.skipIf(!haveRedis)("two pipelines sharing one Redis (bundled model)", () => {
  let redis: ChildProcess;
  let raw: Redis;
  let stateA: RedisSharedState;
  let stateB: RedisSharedState;
  let a: LocalRegionVqaPipeline;
  let b: LocalRegionVqaPipeline;
  const encodes = { a: 0, b: 0 };
  let png: Uint8Array;
  let box: [number, number, number, number];

  beforeAll(async () => {
    const port = await freePort();
    redis = await startRedis(port);
    raw = new Redis({ port });
    const url = `redis://127.0.0.1:${port}`;
    stateA = new RedisSharedState({ url });
    stateB = new RedisSharedState({ url });
    await Promise.all([stateA.connect(), stateB.connect()]);
    const models = await resolveModelOptions({ visionThreads: 1, llmThreads: 1, device: "cpu", gpu: false });
    const base = { ...models, segmenter: undefined, text: undefined };
    a = await createPipeline({
      ...base,
      sharedState: stateA,
      onStage: (s) => void (s === "encode" && encodes.a++),
    });
    b = await createPipeline({
      ...base,
      sharedState: stateB,
      onStage: (s) => void (s === "encode" && encodes.b++),
    });
    const scene = generateScene(5, 3);
    png = await encodePng(renderScene(scene).image);
    box = objectBox(scene.objects[0]) as [number, number, number, number];
  }, 120_000);

  afterAll(async () => {
    await a?.dispose();
    await b?.dispose();
    await stateA?.close();
    await stateB?.close();
    raw?.disconnect();
    redis?.kill("SIGKILL");
  });

  it("encodes a region on one pipeline only; the other reads exactly the same embeddings", async () => {
    const [fromA] = await a.embedRegions(png, [{ kind: "box", box }]);
    // The write is in the background of the encode.
    for (let i = 0; i < 50 && (await raw.dbsize()) === 0; i++) await new Promise((r) => setTimeout(r, 20));
    const [fromB] = await b.embedRegions(png, [{ kind: "box", box }]);
    expect(encodes).toEqual({ a: 1, b: 0 });
    expect(fromB.key).toBe(fromA.key);
    expect(Array.from(fromB.data)).toEqual(Array.from(fromA.data));
    expect(Array.from(fromB.imageEmbed!)).toEqual(Array.from(fromA.imageEmbed!));
  });

  it("continues a conversation on the other pipeline with the same answers as the first (temperature 0)", async () => {
    const questions = ["What colour is the highlighted region?", "What shape is it?", "Where is it?"];
    const conv = await a.openConversation(png, { kind: "box", box });
    await conv.ask(questions[0], { maxTokens: 16 }).result;
    await conv.ask(questions[1], { maxTokens: 16 }).result;
    const resumed = await b.resumeConversation(conv.id);
    expect(resumed?.rebuilt).toBe(true);
    expect(resumed!.conversation.turns).toEqual(conv.turns);
    const [onA, onB] = [
      await conv.ask(questions[2], { maxTokens: 16 }).result,
      await resumed!.conversation.ask(questions[2], { maxTokens: 16 }).result,
    ];
    expect(onB.text).toBe(onA.text);
    expect(onB.promptTokens).toBe(onA.promptTokens);
    // Asked again on B: now its own KV cache.
    expect((await b.resumeConversation(conv.id))?.rebuilt).toBe(false);
    expect(encodes.b).toBe(0);
  }, 60_000);

  it("a replica whose copy fell behind (the conversation went on elsewhere) rebuilds it instead of forking it", async () => {
    const conv = await a.openConversation(png, { kind: "box", box });
    await conv.ask("What colour is the highlighted region?", { maxTokens: 8 }).result;
    const onB = (await b.resumeConversation(conv.id))!;
    expect(onB.rebuilt).toBe(true);
    await onB.conversation.ask("What shape is it?", { maxTokens: 8 }).result;
    // Back on A: its own copy has 1 turn, the transcript 2: A must not answer from its stale copy.
    const backOnA = (await a.resumeConversation(conv.id))!;
    expect(backOnA.rebuilt).toBe(true);
    expect(backOnA.conversation.turns).toEqual(onB.conversation.turns);
    await backOnA.conversation.ask("Where is it?", { maxTokens: 8 }).result;
    const againOnB = (await b.resumeConversation(conv.id))!;
    expect(againOnB.rebuilt).toBe(true);
    expect(againOnB.conversation.turns.map((t) => t.question)).toEqual([
      "What colour is the highlighted region?",
      "What shape is it?",
      "Where is it?",
    ]);
    // Unchanged since: B's own copy is current and is kept.
    expect((await b.resumeConversation(conv.id))!.rebuilt).toBe(false);
  }, 60_000);

  it("refuses to continue when the region's shared embeddings expired, or the ids are taken", async () => {
    const conv = await a.openConversation(png, { kind: "whole" });
    await conv.ask("What is in the image?", { maxTokens: 8 }).result;
    const keys = await raw.keys("region-vqa:features:*");
    await raw.del(...keys);
    await expect(b.resumeConversation(conv.id)).rejects.toMatchObject({ code: "conversation_not_found" });
    expect(await b.resumeConversation("conv_unknown")).toBeUndefined();
    await expect(b.openConversation(png, { kind: "whole" }, { id: conv.id })).rejects.toMatchObject({
      code: "conversation_exists",
    });
    await expect(
      b.openConversation(png, { kind: "whole" }, { id: "no spaces allowed" }),
    ).rejects.toMatchObject({
      code: "invalid_request",
    });
    // Closing removes the transcript for every replica.
    expect(await b.closeConversation(conv.id)).toBe(true);
    expect(await raw.exists(`region-vqa:conversation:${conv.id}`)).toBe(0);
  }, 60_000);
});
