/**
 * `RedisSharedState`: what replicas of one deployment share through Redis (any Redis 6+ server; the
 * client is ioredis). Two things live there:
 *   - the region-embedding cache (`features`): a region encoded on one replica is not encoded again on
 *     another; entries expire after `featureTtlMs` and Redis's own `maxmemory` policy bounds the total;
 *   - conversation transcripts (`transcripts`), written after every turn, so that any replica can
 *     continue a conversation whose replica died or evicted it.
 *
 * Redis is an accelerator, never a dependency of a request: every command has a short deadline, no
 * command waits in a queue while the connection is down, and every failure becomes "not found" (reads)
 * or a skipped write. Requests then run from local state; the failures are counted, logged once per
 * outage and reported by `status()` (/readyz says "degraded").
 */
import { Redis } from "ioredis";
import type { SamFrame, SharedSegmenterEntry } from "../segmenter/types.js";
import {
  decodeBundle,
  decodeEmbeddings,
  encodeBundle,
  encodeEmbeddings,
  type SharedFeatureDtype,
  type StoredEmbeddings,
} from "./feature-codec.js";
import { parseTranscript, type Transcript } from "./transcript.js";

export interface SharedStateOptions {
  /** `redis://[user:password@]host:port[/db]` or `rediss://...` for TLS. */
  url: string;
  /** Prefix of every key, so several deployments can share one Redis. Default "region-vqa:". */
  keyPrefix?: string;
  /** Deadline of one Redis command in ms. Default 250. */
  commandTimeoutMs?: number;
  /** How long a shared region embedding lives. Default 1 hour. */
  featureTtlMs?: number;
  /** How long a transcript lives after its last turn. Default 24 hours. */
  transcriptTtlMs?: number;
  /** Element type of shared embeddings. Default fp16 (half the bytes; every replica uses the rounded values). */
  featureDtype?: SharedFeatureDtype;
  /** Entries larger than this are not shared. Default 64 MiB. */
  maxEntryBytes?: number;
  logger?: { info(message: string): void; warn(message: string): void };
  /** Each command: its kind, how it ended and how long it took (metrics hook). */
  onCommand?: (op: SharedStateOp, result: SharedStateResult, seconds: number) => void;
}

export type SharedStateOp =
  | "feature_get"
  | "feature_set"
  | "segmenter_get"
  | "segmenter_set"
  | "transcript_get"
  | "transcript_set"
  | "transcript_delete";
/** `rejected`: a value was read but refused (corrupt, foreign, another format). */
export type SharedStateResult = "hit" | "miss" | "ok" | "error" | "rejected";

export interface SharedStateStatus {
  /** "ok": connected and the last command succeeded; "degraded": Redis is unreachable or failing. */
  state: "ok" | "degraded";
  /** Why it is degraded. */
  error?: string;
  /** Redis's maxmemory (bytes, 0 = unbounded), when the server lets us read it. */
  maxMemoryBytes?: number;
}

/** The frame stored with shared segmenter embeddings, if it is one. */
function asFrame(meta: unknown): SamFrame | undefined {
  const f = meta as Record<string, unknown> | null;
  const keys = ["width", "height", "resizedWidth", "resizedHeight", "inputSize"] as const;
  if (!f || typeof f !== "object" || !keys.every((k) => Number.isInteger(f[k]) && (f[k] as number) > 0)) {
    return undefined;
  }
  return Object.fromEntries(keys.map((k) => [k, f[k]])) as unknown as SamFrame;
}

export class RedisSharedState {
  readonly featureDtype: SharedFeatureDtype;
  private readonly client: Redis;
  private readonly prefix: string;
  private readonly featureTtlMs: number;
  private readonly transcriptTtlMs: number;
  private readonly maxEntryBytes: number;
  private lastError: string | undefined;
  private maxMemoryBytes: number | undefined;
  /** Whether the current outage was logged (once per outage, not per reconnection attempt). */
  private outageLogged = false;

  constructor(private readonly options: SharedStateOptions) {
    this.prefix = options.keyPrefix ?? "region-vqa:";
    this.featureTtlMs = options.featureTtlMs ?? 60 * 60_000;
    this.transcriptTtlMs = options.transcriptTtlMs ?? 24 * 60 * 60_000;
    this.featureDtype = options.featureDtype ?? "fp16";
    this.maxEntryBytes = options.maxEntryBytes ?? 64 * 1024 * 1024;
    this.client = new Redis(options.url, {
      lazyConnect: true,
      // Fail at once while disconnected instead of queueing (a queued request would hang).
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      commandTimeout: options.commandTimeoutMs ?? 250,
      connectTimeout: 2000,
      // Keep reconnecting in the background, at most every 2 s.
      retryStrategy: (times) => Math.min(100 * times, 2000),
    });
    this.client.on("error", (err: Error) => this.noteError(err));
    this.client.on("ready", () => {
      if (this.outageLogged) this.options.logger?.info("shared state: Redis is reachable again");
      this.outageLogged = false;
      this.lastError = undefined;
      void this.readMaxMemory();
    });
    this.client.on("end", () => this.noteError(new Error("connection closed")));
    this.lastError = "not connected yet";
  }

  /** Starts connecting; resolves when connected or after the first failure (requests never wait for it). */
  async connect(): Promise<void> {
    await this.client.connect().catch((err: Error) => this.noteError(err));
  }

  status(): SharedStateStatus {
    const connected = this.client.status === "ready";
    return connected && this.lastError === undefined
      ? { state: "ok", ...(this.maxMemoryBytes !== undefined ? { maxMemoryBytes: this.maxMemoryBytes } : {}) }
      : { state: "degraded", error: this.lastError ?? `connection ${this.client.status}` };
  }

  /** Region embeddings by cache key, in order; undefined where absent, unreadable or Redis failed. */
  async getFeatures(keys: string[]): Promise<Array<StoredEmbeddings | undefined>> {
    if (keys.length === 0) return [];
    const values = await this.run("feature_get", () =>
      this.client.mgetBuffer(...keys.map((k) => this.featureKey(k))),
    );
    if (!values) return keys.map(() => undefined);
    return values.map((bytes, i) => {
      if (!bytes) {
        this.options.onCommand?.("feature_get", "miss", 0);
        return undefined;
      }
      const decoded = decodeEmbeddings(keys[i], bytes);
      if (!decoded.ok) {
        this.options.onCommand?.("feature_get", "rejected", 0);
        this.options.logger?.warn(`shared state: ignoring the entry for ${keys[i]} (${decoded.reason})`);
        return undefined;
      }
      this.options.onCommand?.("feature_get", "hit", 0);
      return decoded.value;
    });
  }

  /** Shares one region's embeddings (best effort: a failure is counted, never thrown). */
  async putFeatures(key: string, value: StoredEmbeddings): Promise<void> {
    const bytes = encodeEmbeddings(key, value, this.featureDtype);
    if (bytes.length > this.maxEntryBytes) return;
    await this.run("feature_set", () =>
      this.client.set(this.featureKey(key), bytes, "PX", this.featureTtlMs),
    );
  }

  /** A segmenter's embeddings of one image (by its cache key), or undefined. */
  async getSegmenterEmbeddings(key: string): Promise<SharedSegmenterEntry | undefined> {
    const bytes = await this.run("segmenter_get", () => this.client.getBuffer(this.segmenterKey(key)));
    if (bytes === undefined) return undefined;
    if (bytes === null) {
      this.options.onCommand?.("segmenter_get", "miss", 0);
      return undefined;
    }
    const decoded = decodeBundle(key, bytes);
    const frame = decoded.ok ? asFrame(decoded.value.meta) : undefined;
    if (!decoded.ok || !frame) {
      this.options.onCommand?.("segmenter_get", "rejected", 0);
      this.options.logger?.warn(
        `shared state: ignoring the segmenter entry for ${key} (${decoded.ok ? "no frame" : decoded.reason})`,
      );
      return undefined;
    }
    this.options.onCommand?.("segmenter_get", "hit", 0);
    const embeddings: SharedSegmenterEntry["embeddings"] = {};
    for (const t of decoded.value.tensors) embeddings[t.name] = { data: t.data, shape: t.shape };
    return { frame, embeddings };
  }

  /** Shares a segmenter's embeddings of one image (best effort, like `putFeatures`). */
  async putSegmenterEmbeddings(key: string, entry: SharedSegmenterEntry): Promise<void> {
    const tensors = Object.entries(entry.embeddings).map(([name, t]) => ({
      name,
      shape: t.shape,
      data: t.data,
    }));
    const bytes = encodeBundle(key, { meta: entry.frame, tensors }, this.featureDtype);
    if (bytes.length > this.maxEntryBytes) return;
    await this.run("segmenter_set", () =>
      this.client.set(this.segmenterKey(key), bytes, "PX", this.featureTtlMs),
    );
  }

  async getTranscript(id: string): Promise<Transcript | undefined> {
    const text = await this.run("transcript_get", () => this.client.get(this.transcriptKey(id)));
    if (text === undefined) return undefined;
    if (text === null) {
      this.options.onCommand?.("transcript_get", "miss", 0);
      return undefined;
    }
    const transcript = parseTranscript(text, id);
    this.options.onCommand?.("transcript_get", transcript ? "hit" : "rejected", 0);
    if (!transcript) this.options.logger?.warn(`shared state: ignoring the unreadable transcript of ${id}`);
    return transcript;
  }

  async putTranscript(transcript: Transcript): Promise<void> {
    await this.run("transcript_set", () =>
      this.client.set(
        this.transcriptKey(transcript.id),
        JSON.stringify(transcript),
        "PX",
        this.transcriptTtlMs,
      ),
    );
  }

  /** Whether a transcript was deleted (false when there was none, or Redis failed). */
  async deleteTranscript(id: string): Promise<boolean> {
    return ((await this.run("transcript_delete", () => this.client.del(this.transcriptKey(id)))) ?? 0) > 0;
  }

  async close(): Promise<void> {
    this.client.removeAllListeners("end");
    await this.client.quit().catch(() => this.client.disconnect());
  }

  private featureKey(key: string): string {
    return `${this.prefix}features:${key}`;
  }

  private segmenterKey(key: string): string {
    return `${this.prefix}segmenter:${key}`;
  }

  private transcriptKey(id: string): string {
    return `${this.prefix}conversation:${id}`;
  }

  /** One command with its deadline; undefined when Redis failed (counted and remembered). */
  private async run<T>(op: SharedStateOp, command: () => Promise<T>): Promise<T | undefined> {
    const t0 = performance.now();
    try {
      const value = await command();
      this.options.onCommand?.(op, "ok", (performance.now() - t0) / 1000);
      if (this.lastError !== undefined && this.client.status === "ready") this.lastError = undefined;
      return value;
    } catch (err) {
      this.options.onCommand?.(op, "error", (performance.now() - t0) / 1000);
      this.noteError(err as Error);
      return undefined;
    }
  }

  private noteError(err: Error): void {
    const message = err.message || String(err);
    if (!this.outageLogged) {
      this.options.logger?.warn(`shared state: Redis failed (${message}); serving from local state`);
      this.outageLogged = true;
    }
    this.lastError = message;
  }

  private async readMaxMemory(): Promise<void> {
    try {
      const reply = (await this.client.config("GET", "maxmemory")) as string[];
      const bytes = Number(reply?.[1]);
      if (Number.isFinite(bytes)) {
        this.maxMemoryBytes = bytes;
        if (bytes === 0) {
          this.options.logger?.warn(
            "shared state: Redis has no maxmemory bound; set maxmemory and maxmemory-policy allkeys-lru (deploy/redis.conf)",
          );
        }
      }
    } catch {
      // Managed Redis services often disable CONFIG; the bound is then theirs to keep.
    }
  }
}
