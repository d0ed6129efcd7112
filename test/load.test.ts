/**
 * Load: 30 s of mixed good requests (captions, questions streamed and not, chat completions) from more
 * concurrent clients than the server serves plus queues, on loopback against the real server and the
 * real pipeline (small real models). Every request must end in a 2xx or an intended 503 overloaded
 * (with Retry-After), and the process's memory must not keep growing.
 */
import { afterAll, beforeAll, expect, it } from "vitest";
import type { LocalRegionVqaPipeline } from "../src/pipeline/index.js";
import {
  dataUrl,
  makeImage,
  postJson,
  realPipeline,
  startServer,
  userMessageWithImage,
  type RunningServer,
} from "./support/server.js";

const DURATION_MS = 30_000;
const CLIENTS = 12;
const MAX_CONCURRENT = 2;
const MAX_QUEUE = 4; // served + queued = 6 < 12 clients: some requests must be refused
const RSS_GROWTH_LIMIT_MB = 150;

let pipeline: LocalRegionVqaPipeline;
let server: RunningServer;
let images: string[];

beforeAll(async () => {
  pipeline = await realPipeline();
  server = await startServer(pipeline, {
    limits: { maxConcurrentRequests: MAX_CONCURRENT, maxQueue: MAX_QUEUE, maxTokens: 64 },
  });
  // A few different images: some requests hit the vision cache, some encode.
  images = await Promise.all(
    [
      [64, 48],
      [80, 60],
      [48, 48],
      [96, 40],
    ].map(([w, h]) => makeImage(w, h).then(dataUrl)),
  );
});
afterAll(async () => {
  await server?.close();
  await pipeline?.dispose();
});

type Kind = "caption" | "ask" | "ask-stream" | "chat" | "chat-stream";
const kinds: Kind[] = ["caption", "ask", "ask-stream", "chat", "chat-stream"];

function requestFor(kind: Kind, n: number): { path: string; body: unknown } {
  const image = images[n % images.length];
  const maxTokens = 8 + (n % 3) * 8;
  switch (kind) {
    case "caption":
      return {
        path: "/v1/regions/caption",
        body: { image, regions: ["whole", { box: [0, 0, 20, 20] }], max_tokens: maxTokens },
      };
    case "ask":
    case "ask-stream":
      return {
        path: "/v1/regions/ask",
        body: {
          image,
          box: [4, 4, 30, 30],
          question: `Question ${n}?`,
          max_tokens: maxTokens,
          stream: kind === "ask-stream",
        },
      };
    case "chat":
    case "chat-stream":
      return {
        path: "/v1/chat/completions",
        body: {
          model: "any-name",
          max_tokens: maxTokens,
          stream: kind === "chat-stream",
          messages: [userMessageWithImage(image, `Question ${n}?`)],
        },
      };
  }
}

interface Tally {
  sent: number;
  ok: number;
  overloaded: number;
  overloadedWithoutRetryAfter: number;
  other: Array<{ status: number | string; body: string }>;
  latenciesMs: number[];
}

/** One request to its end (streams read through); never throws. */
async function one(kind: Kind, n: number, tally: Tally): Promise<void> {
  const { path, body } = requestFor(kind, n);
  const started = performance.now();
  tally.sent++;
  try {
    const response = await postJson(server, path, body);
    const text = await response.text();
    if (response.status === 200) {
      // A stream that ended in an error event is not a success.
      const failed = kind.endsWith("stream") && /"error":\{/.test(text);
      if (failed) tally.other.push({ status: "stream error", body: text.slice(-300) });
      else {
        tally.ok++;
        tally.latenciesMs.push(performance.now() - started);
      }
    } else if (response.status === 503 && JSON.parse(text)?.error?.code === "overloaded") {
      tally.overloaded++;
      if (!/^\d+$/.test(response.headers.get("retry-after") ?? "")) tally.overloadedWithoutRetryAfter++;
    } else {
      tally.other.push({ status: response.status, body: text.slice(0, 300) });
    }
  } catch (err) {
    tally.other.push({ status: "network", body: String(err) });
  }
}

const newTally = (): Tally => ({
  sent: 0,
  ok: 0,
  overloaded: 0,
  overloadedWithoutRetryAfter: 0,
  other: [],
  latenciesMs: [],
});

const percentile = (sorted: number[], p: number) =>
  sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];

it("30 s of mixed load above the queue bound: only 2xx and intended 503s, bounded memory", async () => {
  // Warm up (first encodes, first conversations), then measure from a settled state.
  const warm = newTally();
  for (let i = 0; i < kinds.length * 2; i++) await one(kinds[i % kinds.length], i, warm);
  expect(warm.other).toEqual([]);
  const rssBefore = process.memoryUsage().rss;

  const tally = newTally();
  const started = performance.now();
  let n = 0;
  await Promise.all(
    Array.from({ length: CLIENTS }, async (_, client) => {
      while (performance.now() - started < DURATION_MS) {
        const before = tally.overloaded;
        await one(kinds[(client + n) % kinds.length], n++, tally);
        // A refused client backs off a little (less than Retry-After, to keep the pressure on).
        if (tally.overloaded > before) await new Promise((r) => setTimeout(r, 50 + Math.random() * 100));
      }
    }),
  );
  const elapsedS = (performance.now() - started) / 1000;
  const rssAfter = process.memoryUsage().rss;
  const sorted = [...tally.latenciesMs].sort((a, b) => a - b);
  const report = {
    seconds: Number(elapsedS.toFixed(1)),
    sent: tally.sent,
    ok: tally.ok,
    overloaded503: tally.overloaded,
    other: tally.other.length,
    okPerSecond: Number((tally.ok / elapsedS).toFixed(2)),
    sentPerSecond: Number((tally.sent / elapsedS).toFixed(2)),
    p50Ms: Math.round(percentile(sorted, 0.5)),
    p95Ms: Math.round(percentile(sorted, 0.95)),
    maxMs: Math.round(sorted[sorted.length - 1]),
    rssBeforeMB: Math.round(rssBefore / 2 ** 20),
    rssAfterMB: Math.round(rssAfter / 2 ** 20),
  };
  console.log(`load report: ${JSON.stringify(report)}`);

  expect(tally.other, JSON.stringify(tally.other.slice(0, 3))).toEqual([]);
  expect(tally.ok + tally.overloaded).toBe(tally.sent);
  expect(tally.overloadedWithoutRetryAfter).toBe(0);
  // The load really exceeded the bound (some refusals) and the server really served (many answers).
  expect(tally.overloaded).toBeGreaterThan(0);
  expect(tally.ok).toBeGreaterThan(50);
  expect((rssAfter - rssBefore) / 2 ** 20).toBeLessThan(RSS_GROWTH_LIMIT_MB);

  // The server's own books agree: no 5xx other than 503, nothing left in flight or queued.
  const metrics = await (await fetch(`${server.url}/metrics`)).text();
  const fives = metrics
    .split("\n")
    .filter((l) => /^region_vqa_http_requests_total\{.*status="5(?!03)\d\d"/.test(l));
  expect(fives).toEqual([]);
  expect(metrics).toMatch(/region_vqa_queue_depth\{queue="pipeline_requests"\} 0\n/);
}, 120_000);
