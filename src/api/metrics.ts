/**
 * Prometheus metrics of one server: HTTP requests per route, pipeline stage timings, queue depth and
 * cache hits. The pipeline reports into it through the small `PipelineMetricsSink` interface, so it
 * needs no knowledge of prom-client or HTTP.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import type { PipelineCache } from "../pipeline/index.js";

/** The name of each pipeline cache in /metrics (`region_vqa_cache_lookups_total{cache=...}`). */
export const CACHE_METRIC_NAMES: Record<PipelineCache, string> = {
  vision: "vision_embeddings",
  segmenter: "segmenter_embeddings",
  shared: "shared_vision_embeddings",
  shared_segmenter: "shared_segmenter_embeddings",
};

/** What a pipeline may report. Every method is optional to call and cheap. */
export interface PipelineMetricsSink {
  /** One stage (e.g. "decode", "encode", "project", "prefill", "generate") took `seconds`. */
  observeStage(stage: string, seconds: number): void;
  /** Requests waiting for (or holding) an engine right now. */
  setQueueDepth(queue: string, depth: number): void;
  /** A cache lookup (e.g. cache "image_features") hit or missed. */
  recordCache(cache: string, hit: boolean): void;
  /** Tokens produced or consumed ("prompt" | "completion"). */
  addTokens(kind: "prompt" | "completion", count: number): void;
}

export class ServerMetrics implements PipelineMetricsSink {
  readonly registry = new Registry();
  readonly httpRequests = new Counter({
    name: "region_vqa_http_requests_total",
    help: "HTTP requests by route, method and status code",
    labelNames: ["route", "method", "status"] as const,
    registers: [this.registry],
  });
  readonly httpDuration = new Histogram({
    name: "region_vqa_http_request_duration_seconds",
    help: "HTTP request latency by route (until the response ends, streams included)",
    labelNames: ["route", "method"] as const,
    buckets: [0.005, 0.025, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120],
    registers: [this.registry],
  });
  readonly stageDuration = new Histogram({
    name: "region_vqa_pipeline_stage_duration_seconds",
    help: "Time spent in each pipeline stage",
    labelNames: ["stage"] as const,
    buckets: [0.001, 0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    registers: [this.registry],
  });
  readonly deviceInfo = new Gauge({
    name: "region_vqa_device_info",
    help: "Where each stage runs (value 1): vision = ONNX Runtime provider and adapter, llm = llama.cpp build and GPU",
    labelNames: ["stage", "device"] as const,
    registers: [this.registry],
  });
  readonly queueDepth = new Gauge({
    name: "region_vqa_queue_depth",
    help: "Requests waiting for or using a pipeline engine",
    labelNames: ["queue"] as const,
    registers: [this.registry],
  });
  readonly cacheLookups = new Counter({
    name: "region_vqa_cache_lookups_total",
    help: "Pipeline cache lookups by cache and result",
    labelNames: ["cache", "result"] as const,
    registers: [this.registry],
  });
  readonly tokens = new Counter({
    name: "region_vqa_tokens_total",
    help: "Prompt and completion tokens processed",
    labelNames: ["kind"] as const,
    registers: [this.registry],
  });
  readonly rejected = new Counter({
    name: "region_vqa_rejected_requests_total",
    help: "Pipeline requests refused or cut short, by reason (queue_full, queue_timeout, deadline, shutdown)",
    labelNames: ["reason"] as const,
    registers: [this.registry],
  });
  readonly generations = new Counter({
    name: "region_vqa_generations_total",
    help: "LLM answers by finish reason (stop, length, abort: the client left or a deadline passed)",
    labelNames: ["finish_reason"] as const,
    registers: [this.registry],
  });
  readonly conversationTurns = new Counter({
    name: "region_vqa_conversation_turns_total",
    help: "Questions of /v1/regions/ask by how their KV cache was found: new (first turn), reused (held by this replica), rebuilt (from the shared transcript)",
    labelNames: ["kv"] as const,
    registers: [this.registry],
  });
  readonly sharedStateCommands = new Counter({
    name: "region_vqa_shared_state_commands_total",
    help: "Redis commands of the shared state by operation and result (ok, error; per key: hit, miss, rejected)",
    labelNames: ["op", "result"] as const,
    registers: [this.registry],
  });
  readonly sharedStateDuration = new Histogram({
    name: "region_vqa_shared_state_command_duration_seconds",
    help: "Round trip of Redis commands of the shared state (failed ones included)",
    labelNames: ["op"] as const,
    buckets: [0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5],
    registers: [this.registry],
  });
  /** Read at scrape time from `watchSharedState`'s source. */
  private sharedStateSource?: () => { state: string } | undefined;
  readonly sharedStateUp = new Gauge({
    name: "region_vqa_shared_state_up",
    help: "1 while the shared state (Redis) answers, 0 while degraded (and without shared state)",
    registers: [this.registry],
    collect: () => {
      const status = this.sharedStateSource?.();
      if (status) this.sharedStateUp.set(status.state === "ok" ? 1 : 0);
    },
  });
  readonly inFlight = new Gauge({
    name: "region_vqa_http_requests_in_flight",
    help: "HTTP requests being served now",
    registers: [this.registry],
  });

  /** Read at scrape time from `watchCaches`'s source. */
  private cacheSource?: () => Record<
    string,
    { bytes: number; entries: number; maxBytes: number } | undefined
  >;
  readonly cacheBytes = new Gauge({
    name: "region_vqa_cache_bytes",
    help: "Bytes held by each content-keyed cache (vision_embeddings, segmenter_embeddings), and its bound",
    labelNames: ["cache", "kind"] as const,
    registers: [this.registry],
    collect: () => this.collectCaches(),
  });
  readonly cacheEntries = new Gauge({
    name: "region_vqa_cache_entries",
    help: "Entries in each content-keyed cache",
    labelNames: ["cache"] as const,
    registers: [this.registry],
  });

  constructor(options: { collectProcessMetrics?: boolean } = {}) {
    if (options.collectProcessMetrics ?? true) {
      collectDefaultMetrics({ register: this.registry, prefix: "region_vqa_" });
    }
  }

  /** Records where the loaded pipeline's stages run. */
  setDevices(devices: Record<string, string>): void {
    this.deviceInfo.reset();
    for (const [stage, device] of Object.entries(devices)) this.deviceInfo.set({ stage, device }, 1);
  }

  /** Reports the caches' sizes at every scrape (e.g. from the pipeline's `stats()`). */
  watchCaches(
    source: () => Record<string, { bytes: number; entries: number; maxBytes: number } | undefined>,
  ): void {
    this.cacheSource = source;
  }

  /** Reports the shared state's health at every scrape. */
  watchSharedState(source: () => { state: string } | undefined): void {
    this.sharedStateSource = source;
  }

  /** One shared-state command (the hook of `RedisSharedState`). */
  recordSharedCommand(op: string, result: string, seconds: number): void {
    this.sharedStateCommands.inc({ op, result });
    if (result === "ok" || result === "error") this.sharedStateDuration.observe({ op }, seconds);
  }

  private collectCaches(): void {
    const caches = this.cacheSource?.() ?? {};
    for (const [cache, stats] of Object.entries(caches)) {
      if (!stats) continue;
      this.cacheBytes.set({ cache, kind: "used" }, stats.bytes);
      this.cacheBytes.set({ cache, kind: "max" }, stats.maxBytes);
      this.cacheEntries.set({ cache }, stats.entries);
    }
  }

  observeStage(stage: string, seconds: number): void {
    this.stageDuration.observe({ stage }, seconds);
  }
  setQueueDepth(queue: string, depth: number): void {
    this.queueDepth.set({ queue }, depth);
  }
  recordCache(cache: string, hit: boolean): void {
    this.cacheLookups.inc({ cache, result: hit ? "hit" : "miss" });
  }
  addTokens(kind: "prompt" | "completion", count: number): void {
    if (count > 0) this.tokens.inc({ kind }, count);
  }
  /** One finished answer: its tokens and how it ended. */
  recordAnswer(result: { promptTokens: number; completionTokens: number; finishReason: string }): void {
    this.addTokens("prompt", result.promptTokens);
    this.addTokens("completion", result.completionTokens);
    this.generations.inc({ finish_reason: result.finishReason });
  }
}
