/**
 * Serving under pressure: the bounded queue (503 + Retry-After), per-request deadlines, and
 * cancellation when a client goes away, on the real server and the real pipeline (small real models,
 * whose random LLM always generates up to max_tokens: a long answer takes seconds). That the LLM
 * really stops is read from /metrics: an answer that ended with finish_reason "abort" and how many
 * tokens it had produced.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RegionVqaError } from "../src/common/errors.js";
import { RequestScheduler } from "../src/api/index.js";
import { loadConfig } from "../src/config.js";
import { createPipeline, type LocalRegionVqaPipeline } from "../src/pipeline/index.js";
import {
  dataUrl,
  makeImage,
  readSse,
  startServer,
  userMessageWithImage,
  type RunningServer,
} from "./support/server.js";
import { tinyModels } from "./support/tiny-models.js";

const LONG = 1800; // tokens: several seconds of generation on this machine
const DEADLINE_MS = 1000;

let pipeline: LocalRegionVqaPipeline;
/** One request at a time, one more may wait. */
let server: RunningServer;
/** Same pipeline, a 1 s deadline per request. */
let deadlineServer: RunningServer;
let image: string;

beforeAll(async () => {
  pipeline = await createPipeline({
    ...(await tinyModels()),
    modelId: "tiny-test",
    device: "cpu",
    gpu: false,
    visionThreads: 1,
    llmThreads: 1,
    contextSize: 2048,
    maxConversations: 4,
  });
  const limits = { maxTokens: 2000, maxConcurrentRequests: 1, maxQueue: 1 };
  server = await startServer(pipeline, { limits });
  deadlineServer = await startServer(pipeline, { limits: { ...limits, requestTimeoutMs: DEADLINE_MS } });
  image = dataUrl(await makeImage(64, 48));
});
afterAll(async () => {
  await server?.close();
  await deadlineServer?.close();
  await pipeline?.dispose();
});

const askBody = (extra: Record<string, unknown> = {}) =>
  JSON.stringify({ image, question: "Describe it.", max_tokens: LONG, ...extra });

function post(base: RunningServer, path: string, body: string, signal?: AbortSignal): Promise<Response> {
  return fetch(`${base.url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body,
    signal,
  });
}

async function metric(base: RunningServer, pattern: RegExp): Promise<number> {
  const text = await (await fetch(`${base.url}/metrics`)).text();
  const match = pattern.exec(text);
  return match ? Number(match[1]) : 0;
}
const abortedAnswers = (base: RunningServer) =>
  metric(base, /region_vqa_generations_total\{finish_reason="abort"\} (\d+)/);
const completionTokens = (base: RunningServer) =>
  metric(base, /region_vqa_tokens_total\{kind="completion"\} (\d+)/);

async function waitFor(check: () => Promise<boolean>, timeoutMs: number): Promise<number> {
  const started = performance.now();
  while (!(await check())) {
    if (performance.now() - started > timeoutMs) throw new Error(`not within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 25));
  }
  return performance.now() - started;
}

/** Starts a long streamed ask and resolves once its first text piece has arrived. */
async function startStream(base: RunningServer, controller: AbortController) {
  const response = await post(base, "/v1/regions/ask", askBody({ stream: true }), controller.signal);
  expect(response.status).toBe(200);
  const reader = response.body!.getReader();
  let seen = "";
  while (!seen.includes("event: delta")) {
    const { value, done } = await reader.read();
    if (done) throw new Error("stream ended early");
    seen += new TextDecoder().decode(value);
  }
  return reader;
}

/** A short request through the whole pipeline; resolves with its duration. */
async function shortRequest(base: RunningServer): Promise<number> {
  const started = performance.now();
  const response = await post(base, "/v1/regions/caption", JSON.stringify({ image, max_tokens: 4 }));
  expect(response.status, await response.clone().text()).toBe(200);
  await response.json();
  return performance.now() - started;
}

describe("cancellation", () => {
  it("a streaming client that disconnects stops its generation at once", async () => {
    const abortsBefore = await abortedAnswers(server);
    const tokensBefore = await completionTokens(server);
    const controller = new AbortController();
    await startStream(server, controller);
    const disconnectedAt = performance.now();
    controller.abort();
    await waitFor(async () => (await abortedAnswers(server)) === abortsBefore + 1, 3000);
    const stoppedAfter = performance.now() - disconnectedAt;
    const produced = (await completionTokens(server)) - tokensBefore;
    // The answer would have been LONG tokens; it stopped a few tokens after the disconnect.
    expect(produced).toBeGreaterThan(0);
    expect(produced).toBeLessThan(LONG / 4);
    expect(stoppedAfter).toBeLessThan(2000);
    // With one request at a time, the next one is served straight away: the turn was freed.
    expect(await shortRequest(server)).toBeLessThan(3000);
  });

  it("a non-streaming client that disconnects stops its generation too", async () => {
    const abortsBefore = await abortedAnswers(server);
    const tokensBefore = await completionTokens(server);
    const controller = new AbortController();
    const pending = post(server, "/v1/chat/completions", chatBody(LONG), controller.signal).catch(
      (e: Error) => e,
    );
    // Wait until it is being served, give it time to reach the LLM (the image takes ~0.1 s), then leave.
    await waitFor(generating, 5000);
    await new Promise((r) => setTimeout(r, 700));
    controller.abort();
    expect(await pending).toBeInstanceOf(Error);
    await waitFor(async () => (await abortedAnswers(server)) === abortsBefore + 1, 3000);
    expect((await completionTokens(server)) - tokensBefore).toBeLessThan(LONG / 2);
    expect(await shortRequest(server)).toBeLessThan(3000);
  });
});

/** The server is serving a pipeline request right now. */
async function generating(): Promise<boolean> {
  return (await metric(server, /region_vqa_queue_depth\{queue="pipeline_requests"\} (\d+)/)) > 0;
}

function chatBody(maxTokens: number, stream = false): string {
  return JSON.stringify({
    model: "gpt-4o-mini",
    max_tokens: maxTokens,
    stream,
    messages: [userMessageWithImage(image, "Describe it.")],
  });
}

describe("bounded queue", () => {
  it("serves one, queues one, refuses the next with 503 overloaded and Retry-After", async () => {
    const first = new AbortController();
    await startStream(server, first);
    const second = new AbortController();
    const queued = post(
      server,
      "/v1/regions/caption",
      JSON.stringify({ image, max_tokens: 4 }),
      second.signal,
    );
    await waitFor(async () => (await metric(server, /queue="pipeline_waiting"\} (\d+)/)) === 1, 3000);

    const refusedAt = performance.now();
    const refused = await post(server, "/v1/regions/ask", askBody());
    expect(performance.now() - refusedAt).toBeLessThan(1000); // refused at once, not after waiting
    expect(refused.status).toBe(503);
    const retryAfter = Number(refused.headers.get("retry-after"));
    expect(Number.isInteger(retryAfter) && retryAfter >= 1 && retryAfter <= 60).toBe(true);
    const body = (await refused.json()) as { error: { code: string; message: string } };
    expect(body.error.code).toBe("overloaded");
    expect(body.error.message).toMatch(/busy/);
    expect(
      await metric(server, /region_vqa_rejected_requests_total\{reason="queue_full"\} (\d+)/),
    ).toBeGreaterThan(0);

    // The first leaves: the queued request gets its turn and is answered.
    first.abort();
    const answered = await queued;
    expect(answered.status).toBe(200);
    expect(((await answered.json()) as { captions: unknown[] }).captions).toHaveLength(1);
  });

  it("answers whatever model name a chat client sends, naming the model it really used", async () => {
    const response = await post(server, "/v1/chat/completions", chatBody(4));
    expect(response.status).toBe(200);
    expect(((await response.json()) as { model: string }).model).toBe("tiny-test");
  });
});

describe("deadline", () => {
  it("stops a non-streamed answer at the deadline with 408 timeout", async () => {
    const abortsBefore = await abortedAnswers(deadlineServer);
    const started = performance.now();
    const response = await post(deadlineServer, "/v1/regions/ask", askBody());
    const took = performance.now() - started;
    expect(response.status).toBe(408);
    const body = (await response.json()) as { error: { code: string; message: string } };
    expect(body.error.code).toBe("timeout");
    expect(body.error.message).toMatch(/1000 ms/);
    expect(took).toBeGreaterThanOrEqual(DEADLINE_MS - 50);
    expect(took).toBeLessThan(DEADLINE_MS + 2500);
    expect(await abortedAnswers(deadlineServer)).toBe(abortsBefore + 1);
    expect(await metric(deadlineServer, /reason="deadline"\} (\d+)/)).toBeGreaterThan(0);
  });

  it("ends a streamed chat completion at the deadline with an error chunk", async () => {
    const response = await post(deadlineServer, "/v1/chat/completions", chatBody(LONG, true));
    expect(response.status).toBe(200);
    const events = await readSse(response);
    expect(events.at(-1)?.data).toBe("[DONE]");
    const error = JSON.parse(events.at(-2)!.data) as { error?: { code: string } };
    expect(error.error?.code).toBe("timeout");
  });
});

describe("RequestScheduler", () => {
  const until = (ms: number) => new Promise((r) => setTimeout(r, ms));

  it("grants turns in arrival order and refuses beyond the queue", async () => {
    const scheduler = new RequestScheduler({ maxConcurrent: 1, maxQueue: 2, timeoutMs: 10_000 });
    const order: string[] = [];
    const a = await scheduler.admit();
    const b = scheduler.admit().then((l) => (order.push("b"), l));
    const c = scheduler.admit().then((l) => (order.push("c"), l));
    await expect(scheduler.admit()).rejects.toMatchObject({ code: "overloaded" });
    expect(scheduler.stats).toEqual({ active: 1, waiting: 2 });
    a.release();
    a.release(); // idempotent: must not free a second turn
    (await b).release();
    (await c).release();
    expect(order).toEqual(["b", "c"]);
    expect(scheduler.stats).toEqual({ active: 0, waiting: 0 });
  });

  it("a request that waits past its deadline is refused as overloaded with a retry estimate", async () => {
    const scheduler = new RequestScheduler({ maxConcurrent: 1, maxQueue: 1, timeoutMs: 200 });
    const holder = await scheduler.admit();
    await until(50);
    const err = (await scheduler.admit().catch((e: unknown) => e)) as RegionVqaError;
    expect(err.code).toBe("overloaded");
    expect(err.details?.retryAfterSeconds).toBeGreaterThanOrEqual(1);
    expect(scheduler.stats.waiting).toBe(0);
    // The holder's own deadline fired meanwhile: its signal carries a timeout.
    await until(200);
    expect(holder.signal.aborted).toBe(true);
    expect(() => holder.throwIfAborted()).toThrow(/longer than/);
    holder.release();
    expect(scheduler.stats.active).toBe(0);
  });

  it("a client that leaves while waiting leaves the queue; abortAll stops everyone", async () => {
    const scheduler = new RequestScheduler({ maxConcurrent: 1, maxQueue: 4, timeoutMs: 10_000 });
    const holder = await scheduler.admit();
    const client = new AbortController();
    const waiting = scheduler.admit(client.signal).catch((e: unknown) => e);
    client.abort();
    expect(await waiting).toMatchObject({ code: "aborted" });
    expect(scheduler.stats.waiting).toBe(0);
    const other = scheduler.admit().catch((e: unknown) => e);
    scheduler.abortAll(new RegionVqaError("aborted", "stopping"));
    expect(holder.signal.aborted).toBe(true);
    expect(await other).toMatchObject({ code: "aborted" });
    await expect(scheduler.admit()).rejects.toMatchObject({ code: "overloaded" });
    holder.release();
  });
});

describe("scheduling settings", () => {
  it("come from the environment; a queue of 0 is allowed, a deadline of 0 is not", () => {
    const config = loadConfig({
      env: {
        REGION_VQA_MAX_QUEUE: "0",
        REGION_VQA_MAX_CONCURRENT: "3",
        REGION_VQA_REQUEST_TIMEOUT_MS: "5000",
        REGION_VQA_RECEIVE_TIMEOUT_MS: "2000",
        REGION_VQA_SHUTDOWN_GRACE_MS: "0",
        REGION_VQA_MAX_IMAGE_SIDE: "1024",
      },
    });
    expect(config.limits).toMatchObject({
      maxQueue: 0,
      maxConcurrentRequests: 3,
      requestTimeoutMs: 5000,
      receiveTimeoutMs: 2000,
      maxImageSide: 1024,
    });
    expect(config.shutdownGraceMs).toBe(0);
    expect(() => loadConfig({ env: { REGION_VQA_REQUEST_TIMEOUT_MS: "0" } })).toThrow(/requestTimeoutMs/);
    expect(() => loadConfig({ env: { REGION_VQA_MAX_QUEUE: "-1" } })).toThrow(/REGION_VQA_MAX_QUEUE/);
  });
});
