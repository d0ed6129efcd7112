/**
 * Throughput under concurrency: the real server (`buildServer` over the real pipeline) on loopback,
 * with 1, 4, 16... clients, each a loop of `fetch` calls, every request about a different image (so
 * the vision cache never answers). Each level runs until its time is up or its request budget is
 * spent, whichever comes first; requests already sent are awaited, and counted.
 *
 * Requests (greedy, `max_tokens` as given, one box region) go to POST /v1/regions/ask (default: a
 * first question; each opens a conversation that stays open for follow-ups until the pipeline evicts
 * it as the least recently used idle one) or POST /v1/regions/caption (the conversation is closed
 * after the answer). Both run decode -> encode -> project -> prefill -> generate.
 */
import type { OrtDevice } from "../src/common/ort/index.js";
import type { LlmGpu } from "../src/llm/index.js";
import { buildServer } from "../src/api/index.js";
import { loadConfig } from "../src/config.js";
import { createPipeline } from "../src/pipeline/index.js";
import { benchImages, type BenchImage } from "./images.js";
import { pipelineOptionsFor, type BenchModelSet } from "./model-sets.js";
import { quantile, round, rssSampler } from "./stats.js";

export type ConcurrencyEndpoint = "ask" | "caption";

export interface ConcurrencyBenchOptions {
  endpoint: ConcurrencyEndpoint;
  levels: number[];
  /** Longest time one level may send new requests, in seconds. */
  seconds: number;
  /** Most requests in one level. */
  maxRequests: number;
  maxTokens: number;
  visionThreads: number;
  llmThreads: number;
  device: OrtDevice;
  gpu: LlmGpu;
  contextSize: number;
  /** LLM sequences (conversations decoding at once). */
  maxConversations: number;
}

export interface LevelResult {
  clients: number;
  requests: number;
  errors: number;
  /** Error codes seen (code -> count). */
  errorCodes: Record<string, number>;
  wallSeconds: number | null;
  requestsPerSecond: number | null;
  latencyMs: { p50: number | null; p95: number | null; p99: number | null; max: number | null };
  completionTokensPerSecond: number | null;
  /** Vision-cache hits during the level (0: every request was a new image). */
  cacheHits: number;
  peakRssMiB: number;
}

export interface ConcurrencyBenchResult {
  models: { set: string; requested: string; description: string; note?: string };
  options: ConcurrencyBenchOptions;
  endpoint: string;
  imageSize: string;
  levels: LevelResult[];
}

interface ApiResponse {
  /** /v1/regions/caption */
  captions?: Array<{ caption: string; usage: { completion_tokens: number } }>;
  /** /v1/regions/ask */
  answer?: string;
  usage?: { completion_tokens: number };
  error?: { code: string; message: string };
}

/** One timed request of a load level. */
export interface RequestOutcome {
  ok: boolean;
  ms: number;
  /** Answer tokens (0 when the request failed). */
  tokens: number;
  /** The error code (the API's, `http_<status>`, or the fetch error's name) when it failed. */
  code?: string;
  /** The X-Region-VQA-Replica header of the response, when it had one. */
  replica?: string;
}

/** Sends one region request about `png` (and the region `box`) and times it. */
export type RegionRequester = (png: Buffer, box: number[]) => Promise<RequestOutcome>;

/**
 * Requests to `url` (a server's POST /v1/regions/ask or /v1/regions/caption): JSON with the PNG as a
 * base64 data URL, one box region, greedy decoding. Timed from before `fetch` to the parsed body.
 */
export function regionRequester(
  url: string,
  options: { endpoint: ConcurrencyEndpoint; question: string; maxTokens: number },
): RegionRequester {
  return async (png, box) => {
    const t0 = performance.now();
    try {
      const response = await fetch(url, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          image: `data:image/png;base64,${png.toString("base64")}`,
          box,
          ...(options.endpoint === "ask" ? { question: options.question } : {}),
          max_tokens: options.maxTokens,
          temperature: 0,
        }),
      });
      const body = (await response.json()) as ApiResponse;
      const ms = performance.now() - t0;
      const replica = response.headers.get("x-region-vqa-replica") ?? undefined;
      const usage = options.endpoint === "ask" ? body.usage : body.captions?.[0]?.usage;
      if (!response.ok || !usage) {
        return { ok: false, ms, tokens: 0, code: body.error?.code ?? `http_${response.status}`, replica };
      }
      return { ok: true, ms, tokens: usage.completion_tokens, replica };
    } catch (err) {
      return { ok: false, ms: performance.now() - t0, tokens: 0, code: (err as Error).name };
    }
  };
}

/** What one load level measured, before any summary. */
export interface LoadLevelRun {
  /** Latencies of the successful requests, ms, in completion order. */
  latencies: number[];
  /** Answer tokens of the successful requests. */
  tokens: number;
  /** Failed requests by error code. */
  errorCodes: Record<string, number>;
  /** Successful requests by the replica that answered (X-Region-VQA-Replica; "-" without the header). */
  replicas: Record<string, number>;
  wallSeconds: number;
}

/**
 * `clients` concurrent loops of `send`, each taking the next of `images` until they are used up or
 * `seconds` have passed since the start (requests already sent are awaited, and counted).
 */
export async function runLoadLevel(
  send: RegionRequester,
  images: readonly BenchImage[],
  clients: number,
  seconds: number,
): Promise<LoadLevelRun> {
  const latencies: number[] = [];
  const errorCodes: Record<string, number> = {};
  const replicas: Record<string, number> = {};
  let tokens = 0;
  let next = 0;
  const started = performance.now();
  const deadline = started + seconds * 1000;
  const client = async (): Promise<void> => {
    while (performance.now() < deadline && next < images.length) {
      const image = images[next++];
      const r = await send(image.png, image.box);
      if (r.ok) {
        latencies.push(r.ms);
        tokens += r.tokens;
        replicas[r.replica ?? "-"] = (replicas[r.replica ?? "-"] ?? 0) + 1;
      } else {
        errorCodes[r.code ?? "unknown"] = (errorCodes[r.code ?? "unknown"] ?? 0) + 1;
      }
    }
  };
  await Promise.all(Array.from({ length: clients }, client));
  return { latencies, tokens, errorCodes, replicas, wallSeconds: (performance.now() - started) / 1000 };
}

/** A load level's counts, throughput and latency quantiles (the columns of the concurrency table). */
export function summarizeLoadLevel(
  clients: number,
  run: LoadLevelRun,
): Omit<LevelResult, "cacheHits" | "peakRssMiB"> {
  const { latencies, errorCodes } = run;
  const wall = run.wallSeconds;
  return {
    clients,
    requests: latencies.length,
    errors: Object.values(errorCodes).reduce((a, b) => a + b, 0),
    errorCodes,
    wallSeconds: round(wall, 1),
    requestsPerSecond: round(latencies.length / wall, 2),
    latencyMs: {
      p50: round(quantile(latencies, 0.5), 0),
      p95: round(quantile(latencies, 0.95), 0),
      p99: round(quantile(latencies, 0.99), 0),
      max: round(Math.max(...latencies), 0),
    },
    completionTokensPerSecond: round(run.tokens / wall, 1),
  };
}

export async function runConcurrencyBench(
  models: BenchModelSet,
  options: ConcurrencyBenchOptions,
  log: (message: string) => void,
): Promise<ConcurrencyBenchResult> {
  const pipeline = await createPipeline({
    ...pipelineOptionsFor(models, options),
    maxConversations: options.maxConversations,
  });
  const app = await buildServer({
    pipeline,
    config: loadConfig({
      env: {},
      flags: { logLevel: "silent", limits: { maxTokens: Math.max(64, options.maxTokens) } },
    }),
    disposePipelineOnClose: true,
  });
  const base = await app.listen({ host: "127.0.0.1", port: 0 });
  const url = `${base}/v1/regions/${options.endpoint}`;
  const width = 640;
  const height = 480;
  log(`server on ${base} (${models.name}); levels ${options.levels.join(", ")}`);

  const post = regionRequester(url, {
    endpoint: options.endpoint,
    question: models.question,
    maxTokens: options.maxTokens,
  });

  const levels: LevelResult[] = [];
  try {
    // One request first (not counted): the first ORT run and the first llama.cpp batch are slower.
    const [warmup] = await benchImages(1, 5000);
    const w = await post(warmup.png, warmup.box);
    if (!w.ok) throw new Error(`warm-up request failed: ${w.code}`);

    let seed = 10_000;
    for (const clients of options.levels) {
      const budget = Math.max(options.maxRequests, clients);
      const images = await benchImages(budget, seed);
      seed += budget;
      const before = pipeline.stats().cache;
      const sampler = rssSampler();
      const run = await runLoadLevel(post, images, clients, options.seconds);
      const peakRssMiB = sampler.stop();
      const level: LevelResult = {
        ...summarizeLoadLevel(clients, run),
        cacheHits: pipeline.stats().cache.hits - before.hits,
        peakRssMiB,
      };
      levels.push(level);
      log(
        `  ${clients} clients: ${level.requests} requests (${level.errors} errors) in ${level.wallSeconds} s, ` +
          `${level.requestsPerSecond} req/s, p50 ${level.latencyMs.p50} ms, p95 ${level.latencyMs.p95} ms, peak RSS ${peakRssMiB} MiB`,
      );
    }
  } finally {
    await app.close();
  }
  return {
    models: {
      set: models.name,
      requested: models.requested,
      description: models.description,
      note: models.note,
    },
    options,
    endpoint:
      options.endpoint === "ask"
        ? `POST /v1/regions/ask (first question "${models.question}"; JSON, base64 PNG, one box region, temperature 0)`
        : "POST /v1/regions/caption (JSON, base64 PNG, one box region, temperature 0)",
    imageSize: `${width}x${height} PNG`,
    levels,
  };
}
