/**
 * Scale-out on one machine (`npm run bench -- --only cluster`; needs Debian's redis-server and haproxy,
 * and dist/ built). Every process is real: `deploy/local-cluster.sh` starts redis-server, N replicas of
 * `region-vqa serve` (the bundled model) and HAProxy; the baseline is one plain `region-vqa serve`
 * without Redis and without a load balancer. Three measurements:
 *
 *  1. Load: the concurrency bench's requests and level loop (bench/concurrency.ts: first questions on
 *     POST /v1/regions/ask, a different image per request, the same images in every setup) against the
 *     baseline, then through the load balancer with 1 and with 2 replicas.
 *  2. Rebuild: twin conversations (same image, region and 1, 3, 6... previous turns) are started on one
 *     replica, the owner; the next question goes for one twin to the owner (its KV cache is reused) and
 *     for the other twin to the other replica (it rebuilds it from Redis: transcript read, shared
 *     embeddings read, prefill of the history). Both are timed at the client, the answers compared, and
 *     the rebuilding replica's `rebuild` stage is read from /metrics around its request. One real failover follows: the owner of a conversation is killed (SIGKILL)
 *     and its next question goes through the load balancer, which retries on the survivor.
 *  3. Redis cost: commands per request kind and their round trip from
 *     region_vqa_shared_state_command_duration_seconds, value sizes, and `redis-benchmark` as a raw
 *     baseline against the same redis-server.
 *
 * Every process started here is stopped at the end, on failure, and on SIGINT / SIGTERM.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Redis } from "ioredis";
import { encodePng, generateScene, objectBox, renderScene } from "../src/shapes/index.js";
import { regionRequester, runLoadLevel, summarizeLoadLevel, type LevelResult } from "./concurrency.js";
import { benchImages, type BenchImage } from "./images.js";
import { resolveModelSet } from "./model-sets.js";
import {
  mean,
  metricSum,
  parseMetrics,
  quantile,
  round,
  spread,
  type MetricSample,
  type Spread,
} from "./stats.js";

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

export interface ClusterBenchOptions {
  /** Concurrent clients of the load levels. */
  levels: number[];
  /** Requests per load level (the same images in every setup). */
  requests: number;
  /** Longest time one load level may send new requests, in seconds (a safety cap). */
  seconds: number;
  maxTokens: number;
  /** ONNX Runtime and llama.cpp threads of every server process. */
  threads: number;
  llmThreads: number;
  /** Previous turns of the rebuild rows. */
  histories: number[];
  /** Conversations per rebuild row. */
  repeats: number;
  /** Requests per kind when counting Redis commands. */
  commandSamples: number;
  /** Kill a replica at the end and time the follow-up that fails over. */
  failover: boolean;
  /** Run redis-benchmark against the cluster's redis-server (when installed). */
  redisBenchmark: boolean;
  /** Seconds a server or the cluster may take to be ready. */
  readyTimeoutS: number;
  /** Which setups the load runs on (default: all three). */
  setups?: SetupKey[];
}

export type SetupKey = "baseline" | "replicas-1" | "replicas-2";

export interface ClusterLevel extends Omit<LevelResult, "cacheHits" | "peakRssMiB"> {
  p90Ms: number | null;
  /** Answers by the replica that gave them. */
  perReplica: Record<string, number>;
  /** Encoder runs on all replicas during the level (every request is a new image: = requests). */
  encoderRuns: number;
  /** Vision cache hits (local and shared) on all replicas during the level. */
  visionCacheHits: number;
  /** Resident memory of the server processes (summed over replicas) at the end of the level. */
  serverRssMiB: number;
  /**
   * CPU used during the level, in cores (CPU seconds / wall seconds): the server processes (all their
   * threads), HAProxy + redis-server, this bench's client loop, and the whole machine (other jobs
   * included); null where it could not be read (not Linux).
   */
  cpuCores: { servers: number | null; lbRedis: number | null; client: number | null; machine: number | null };
  /** Mean ms per run of each pipeline stage on the servers during the level (region_vqa_pipeline_stage_duration_seconds). */
  stagesMs: Record<string, number | null>;
  /** CPU ms per answered request: the servers', and HAProxy's + redis-server's. */
  cpuMsPerRequest: { servers: number | null; lbRedis: number | null };
}

export interface OpCost {
  /** Commands sent (ok and failed). */
  commands: number;
  /** Mean round trip in ms, as the replica measured it (client side, ioredis included). */
  meanMs: number | null;
}

export interface ClusterSetupResult {
  key: SetupKey;
  label: string;
  replicas: number;
  loadBalancer: boolean;
  redis: boolean;
  /** From spawning to every replica ready (and the load balancer passing requests), ms. */
  readyMs: number;
  loadAverage: { start: number[]; end: number[] };
  levels: ClusterLevel[];
  /** Redis commands on all replicas during the load levels, by operation. */
  redisDuringLoad?: Record<string, OpCost>;
  /** Pids of the processes the setup ran (all stopped when the bench returns). */
  pids: number[];
}

export interface RebuildRow {
  history: number;
  conversations: number;
  /** Client-side latency of the follow-up on the replica holding the KV cache. */
  ownerMs: Spread;
  /** Client-side latency of the same follow-up on the other replica (rebuilt from Redis). */
  rebuiltMs: Spread;
  /** Per conversation: rebuilt minus owner, ms. */
  extraMs: Spread;
  /** The rebuilding replica's `rebuild` stage (transcript + embeddings + prefill of the history). */
  rebuildStageMs: Spread;
  /** Of which the prefill (system prompt, image rows, the history). */
  rebuildPrefillMs: Spread;
  /** Of which the Redis reads (transcript_get + feature_get round trips). */
  rebuildRedisMs: Spread;
  /** Prompt tokens of the follow-up answer (the whole conversation, as `usage.prompt_tokens`). */
  promptTokens: number | null;
  /** How the replicas counted the follow-ups (region_vqa_conversation_turns_total). */
  kv: { reused: number; rebuilt: number };
  /** Conversations whose rebuilt answer equals the owner's. */
  answersEqual: number;
  /** History turns that the load balancer sent to a replica other than the conversation's first. */
  historyOffOwner: number;
}

export interface FailoverResult {
  history: number;
  victim: string;
  survivor: string;
  /** The follow-up sent through the load balancer right after SIGKILL. */
  afterKill: { ms: number; status: number; replica: string | null; turns: number | null };
  /** The survivor's rebuilt counter rose by this much. */
  rebuilt: number;
  /** The answer equals a twin conversation's, answered by the victim before it died. */
  answerEqualsReference: boolean;
  /** The next follow-up (now local on the survivor). */
  next: { ms: number; status: number; replica: string | null };
}

export interface RedisBenchmarkRun {
  command: string;
  results: Array<{ test: string; requestsPerSecond: number; p50Ms: number | null }>;
  error?: string;
}

export interface RequestKindCost {
  kind: string;
  requests: number;
  /** Commands per request by operation. */
  commands: Record<string, number>;
  /** How the replica counted the requests' KV cache (region_vqa_conversation_turns_total), per request. */
  kv: Record<string, number>;
}

export interface ClusterBenchResult {
  models: { description: string; question: string; followUp: string };
  options: ClusterBenchOptions;
  cores: number;
  loadAverage: { start: number[]; end: number[] };
  imageSize: string;
  setups: ClusterSetupResult[];
  rebuild: RebuildRow[];
  failover?: FailoverResult;
  redis: {
    perKind: RequestKindCost[];
    /** Round trips on the idle cluster (the command-count and rebuild phases). */
    idle: Record<string, OpCost>;
    /** Stored value sizes, bytes (mean over the keys present). */
    valueBytes: { feature: number | null; transcript: number | null; features: number; transcripts: number };
    benchmarks: RedisBenchmarkRun[];
  };
}

// ---------------------------------------------------------------------------------------------------
// Processes

interface Started {
  /** Stops it (and what it started), waiting for the exit; idempotent. */
  stop(): Promise<void>;
  /** Last resort when the bench itself exits: signals only, no waiting. */
  stopNow(): void;
}

const running = new Set<Started>();

function waitExit(child: ChildProcess, ms: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    child.once("exit", () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

async function stopChild(child: ChildProcess, graceMs: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill("SIGTERM");
  if (!(await waitExit(child, graceMs))) {
    child.kill("SIGKILL");
    await waitExit(child, 5000);
  }
}

/** A free loopback port with `span` free ports after it (also used by test/cluster.test.ts). */
export async function freePortRange(span: number): Promise<number> {
  const free = (p: number) =>
    new Promise<boolean>((resolve) => {
      const s = createServer();
      s.once("error", () => resolve(false));
      s.listen(p, "127.0.0.1", () => s.close(() => resolve(true)));
    });
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = 20000 + Math.floor(Math.random() * 30000);
    let ok = true;
    for (let p = base; p <= base + span && ok; p++) ok = await free(p);
    if (ok) return base;
  }
  throw new Error("no free port range on 127.0.0.1");
}

/** The environment of every server: this one's, without shared-state settings, with the thread counts. */
function serverEnv(options: Pick<ClusterBenchOptions, "threads" | "llmThreads">): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!/^REGION_VQA_(REDIS|REPLICA|SHARED|TRANSCRIPT)/.test(k)) env[k] = v;
  }
  env.REGION_VQA_THREADS = String(options.threads);
  env.REGION_VQA_LLM_THREADS = String(options.llmThreads);
  return env;
}

/** The tools the cluster needs; a list of what is missing. */
export function clusterPrerequisites(): string[] {
  const missing = ["redis-server", "haproxy", "curl"].filter(
    (cmd) => spawnSync("sh", ["-c", `command -v ${cmd}`]).status !== 0,
  );
  if (!existsSync(path.join(repoRoot, "dist", "cli", "index.js"))) missing.push("dist/ (npm run build)");
  return missing;
}

export interface Backend {
  name: string;
  url: string;
}

export interface ServerTarget extends Started {
  /** Where clients send requests: the load balancer, or the plain server. */
  url: string;
  backends: Backend[];
  readyMs: number;
  redisPort?: number;
  /** The pid the cluster script recorded for `name` (redis, haproxy, replica-<i>). */
  pid?(name: string): number;
  /** Every process started for this target (the script too). */
  pids(): number[];
}

/** `deploy/local-cluster.sh` with `replicas` replicas on free loopback ports. */
export async function startCluster(
  replicas: number,
  options: Pick<ClusterBenchOptions, "threads" | "llmThreads" | "readyTimeoutS">,
): Promise<ServerTarget> {
  const port = await freePortRange(replicas + 1);
  const stateDir = mkdtempSync(path.join(os.tmpdir(), "region-vqa-bench-cluster-"));
  const t0 = performance.now();
  const script = spawn(
    "bash",
    [
      "deploy/local-cluster.sh",
      "--replicas",
      String(replicas),
      "--port",
      String(port),
      "--state-dir",
      stateDir,
      "--ready-timeout",
      String(options.readyTimeoutS),
    ],
    { cwd: repoRoot, env: serverEnv(options), stdio: ["ignore", "pipe", "pipe"] },
  );
  const read = (name: string): string => readFileSync(path.join(stateDir, name), "utf8").trim();
  const pidOf = (name: string): number => Number(read(`${name}.pid`));
  const names = ["redis", "haproxy", ...Array.from({ length: replicas }, (_, i) => `replica-${i + 1}`)];
  /** Pids recorded by the script, read while the state folder exists. */
  const pids = new Map<string, number>();
  const notePids = (): void => {
    for (const n of names) {
      try {
        pids.set(n, pidOf(n));
      } catch {
        // Not started yet.
      }
    }
  };
  const redisPort = port + replicas + 1;
  /** Whether `pid` is still the process the script started as `name` (a pid may be reused once it exits). */
  const ours = (name: string, pid: number): boolean => {
    let cmdline: string;
    try {
      cmdline = readFileSync(`/proc/${pid}/cmdline`, "utf8").replace(/\0/g, " ");
    } catch {
      return false;
    }
    if (name === "redis") return cmdline.startsWith("redis-server") && cmdline.includes(String(redisPort));
    if (name === "haproxy") return cmdline.includes(stateDir);
    return (
      cmdline.includes(`--replica-name ${name}`) && cmdline.includes(`--port ${port + Number(name.slice(8))}`)
    );
  };
  const signalOurs = (signal: NodeJS.Signals): void => {
    for (const [name, pid] of pids) if (ours(name, pid)) process.kill(pid, signal);
  };
  let stopped = false;
  const started: Started = {
    async stop() {
      if (stopped) return;
      stopped = true;
      notePids();
      // The script stops the replicas (SIGTERM, then SIGKILL after 10 s), HAProxy and Redis; whatever
      // outlived it (the script killed, or stuck) is killed here.
      await stopChild(script, 20_000);
      signalOurs("SIGKILL");
      rmSync(stateDir, { recursive: true, force: true });
      running.delete(started);
    },
    stopNow() {
      notePids();
      script.kill("SIGTERM");
      signalOurs("SIGTERM");
    },
  };
  running.add(started);
  let out = "";
  let err = "";
  script.stdout!.on("data", (d: Buffer) => (out += d.toString()));
  script.stderr!.on("data", (d: Buffer) => (err += d.toString()));
  try {
    const url = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`the cluster was not ready in ${options.readyTimeoutS + 10} s:\n${err}`)),
        (options.readyTimeoutS + 10) * 1000,
      );
      const onData = (): void => {
        const m = /cluster ready: (http:\/\/\S+)/.exec(out);
        if (m) {
          clearTimeout(timer);
          resolve(m[1]);
        }
      };
      script.stdout!.on("data", onData);
      script.once("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`local-cluster.sh exited with ${code}:\n${err.trim()}`));
      });
    });
    const readyMs = performance.now() - t0;
    notePids();
    return {
      ...started,
      url,
      readyMs,
      redisPort,
      backends: Array.from({ length: replicas }, (_, i) => ({
        name: `replica-${i + 1}`,
        url: `http://127.0.0.1:${read(`replica-${i + 1}.port`)}`,
      })),
      pid: (name) => pids.get(name) ?? pidOf(name),
      pids: () => [script.pid!, ...pids.values()],
    };
  } catch (e) {
    await started.stop();
    throw e;
  }
}

/** One plain `region-vqa serve` (no Redis, no load balancer), named "baseline". */
export async function startPlainServer(
  options: Pick<ClusterBenchOptions, "threads" | "llmThreads" | "readyTimeoutS">,
): Promise<ServerTarget> {
  const port = await freePortRange(0);
  const stateDir = mkdtempSync(path.join(os.tmpdir(), "region-vqa-bench-serve-"));
  const logPath = path.join(stateDir, "serve.log");
  const log = openSync(logPath, "w");
  const t0 = performance.now();
  const child = spawn(
    process.execPath,
    [
      "bin/region-vqa.js",
      "serve",
      "--host",
      "127.0.0.1",
      "--port",
      String(port),
      "--replica-name",
      "baseline",
    ],
    { cwd: repoRoot, env: serverEnv(options), stdio: ["ignore", log, log] },
  );
  closeSync(log);
  let stopped = false;
  const started: Started = {
    async stop() {
      if (stopped) return;
      stopped = true;
      await stopChild(child, 35_000);
      rmSync(stateDir, { recursive: true, force: true });
      running.delete(started);
    },
    stopNow() {
      child.kill("SIGTERM");
    },
  };
  running.add(started);
  const url = `http://127.0.0.1:${port}`;
  try {
    const deadline = performance.now() + options.readyTimeoutS * 1000;
    for (;;) {
      if (child.exitCode !== null) {
        throw new Error(`region-vqa serve exited with ${child.exitCode}:\n${readFileSync(logPath, "utf8")}`);
      }
      const ok = await fetch(`${url}/readyz`).then(
        (r) => r.ok,
        () => false,
      );
      if (ok) break;
      if (performance.now() > deadline)
        throw new Error(`region-vqa serve not ready in ${options.readyTimeoutS} s`);
      await new Promise((r) => setTimeout(r, 200));
    }
  } catch (e) {
    await started.stop();
    throw e;
  }
  return {
    ...started,
    url,
    readyMs: performance.now() - t0,
    backends: [{ name: "baseline", url }],
    pids: () => [child.pid!],
  };
}

/** Stops everything still running (the bench's `finally`). */
export async function stopAll(): Promise<void> {
  await Promise.all([...running].map((s) => s.stop().catch(() => undefined)));
}

/** While `body` runs, SIGINT / SIGTERM / exit stop what this module started. */
async function withCleanup<T>(body: () => Promise<T>): Promise<T> {
  const onSignal = (signal: NodeJS.Signals): void => {
    void stopAll().finally(() => process.exit(signal === "SIGINT" ? 130 : 143));
  };
  const onExit = (): void => {
    for (const s of running) s.stopNow();
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  process.on("exit", onExit);
  try {
    return await body();
  } finally {
    await stopAll();
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    process.off("exit", onExit);
  }
}

// ---------------------------------------------------------------------------------------------------
// HTTP

export async function scrape(url: string): Promise<MetricSample[]> {
  return parseMetrics(await (await fetch(`${url}/metrics`)).text());
}

async function scrapeAll(backends: readonly Backend[]): Promise<MetricSample[][]> {
  return Promise.all(backends.map((b) => scrape(b.url)));
}

/** Sum over backends of `metric(labels)` after minus before. */
function delta(
  before: MetricSample[][],
  after: MetricSample[][],
  name: string,
  labels: Record<string, string> = {},
): number {
  let d = 0;
  for (let i = 0; i < after.length; i++)
    d += metricSum(after[i], name, labels) - metricSum(before[i], name, labels);
  return d;
}

const SHARED_DURATION = "region_vqa_shared_state_command_duration_seconds";
const SHARED_OPS = ["feature_get", "feature_set", "transcript_get", "transcript_set", "transcript_delete"];

function opCosts(before: MetricSample[][], after: MetricSample[][]): Record<string, OpCost> {
  const out: Record<string, OpCost> = {};
  for (const op of SHARED_OPS) {
    const commands = delta(before, after, `${SHARED_DURATION}_count`, { op });
    if (commands === 0) continue;
    const seconds = delta(before, after, `${SHARED_DURATION}_sum`, { op });
    out[op] = { commands, meanMs: round((seconds / commands) * 1000, 3) };
  }
  return out;
}

export interface Turn {
  status: number;
  ms: number;
  replica: string | null;
  conversationId: string | null;
  answer?: string;
  turns?: number;
  promptTokens?: number;
  error?: string;
}

/** POST /v1/regions/ask (a follow-up when `conversationId` is given), timed at the client. */
export async function askTurn(
  url: string,
  body: Record<string, unknown>,
  maxTokens: number,
  conversationId?: string,
): Promise<Turn> {
  const t0 = performance.now();
  const res = await fetch(`${url}/v1/regions/ask`, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      ...(conversationId ? { "x-conversation-id": conversationId } : {}),
    },
    body: JSON.stringify({ temperature: 0, max_tokens: maxTokens, ...body }),
  });
  const json = (await res.json()) as {
    answer?: string;
    turns?: number;
    usage?: { prompt_tokens: number };
    error?: { code: string };
  };
  return {
    status: res.status,
    ms: performance.now() - t0,
    replica: res.headers.get("x-region-vqa-replica"),
    conversationId: res.headers.get("x-conversation-id"),
    answer: json.answer,
    turns: json.turns,
    promptTokens: json.usage?.prompt_tokens,
    error: json.error?.code,
  };
}

async function closeConversation(url: string, id: string): Promise<void> {
  await fetch(`${url}/v1/regions/conversations/${encodeURIComponent(id)}`, { method: "DELETE" }).catch(
    () => undefined,
  );
}

function expectOk(turn: Turn, what: string): Turn {
  if (turn.status !== 200) throw new Error(`${what}: HTTP ${turn.status} (${turn.error ?? "no code"})`);
  return turn;
}

/** Shapes-world scene `index` (what the bundled model was trained on): PNG data URL and first object's box. */
function scene(index: number): Promise<{ image: string; box: number[] }> {
  return shapesSceneRequest(4242, index);
}

/** A shapes-world scene as request fields: its PNG as a data URL and its first object's box (also used by test/cluster.test.ts). */
export async function shapesSceneRequest(
  seed: number,
  index: number,
): Promise<{ image: string; box: number[] }> {
  const s = generateScene(seed, index);
  const png = await encodePng(renderScene(s).image);
  return {
    image: `data:image/png;base64,${Buffer.from(png).toString("base64")}`,
    box: objectBox(s.objects[0]),
  };
}

/** Questions of the history turns after the first (phrasings the shapes model was trained on). */
const HISTORY_QUESTIONS = [
  "What colour is the highlighted region?",
  "Where is the highlighted object?",
  "Describe the highlighted region.",
  "What is in the highlighted region?",
  "How many objects are in the image?",
  "Is it a circle?",
];

// ---------------------------------------------------------------------------------------------------
// CPU accounting (Linux /proc; null elsewhere)

let clockTicks: number | undefined;
function ticksPerSecond(): number {
  if (clockTicks === undefined) {
    const r = spawnSync("getconf", ["CLK_TCK"], { encoding: "utf8" });
    clockTicks = Number(r.stdout?.trim()) || 100;
  }
  return clockTicks;
}

/** User + system CPU seconds of process `pid` so far (/proc/<pid>/stat), or null. */
export function processCpuSeconds(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) / ticksPerSecond();
  } catch {
    return null;
  }
}

/** Busy CPU seconds of the whole machine so far (/proc/stat: all but idle and iowait), or null. */
export function machineBusySeconds(): number | null {
  try {
    const line = readFileSync("/proc/stat", "utf8").split("\n")[0];
    const [, ...ticks] = line.trim().split(/\s+/).map(Number);
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    const busy = ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6] + ticks[7];
    return busy / ticksPerSecond();
  } catch {
    return null;
  }
}

interface CpuSnapshot {
  lbRedis: number | null;
  client: number;
  machine: number | null;
}

function cpuSnapshot(pids: number[]): CpuSnapshot {
  let lbRedis: number | null = pids.length ? 0 : null;
  for (const pid of pids) {
    const s = processCpuSeconds(pid);
    lbRedis = s === null || lbRedis === null ? null : lbRedis + s;
  }
  const u = process.cpuUsage();
  return { lbRedis, client: (u.user + u.system) / 1e6, machine: machineBusySeconds() };
}

// ---------------------------------------------------------------------------------------------------
// The measurements

interface Context {
  options: ClusterBenchOptions;
  question: string;
  followUp: string;
  log: (message: string) => void;
  levelImages: BenchImage[][];
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const loadavg = (): number[] => os.loadavg().map((l) => round(l, 2) ?? 0);

/** Each process's first request is slower (ORT plans its memory, llama.cpp warms up): one each, not counted. */
async function warmUp(ctx: Context, target: ServerTarget): Promise<void> {
  const { options } = ctx;
  const warm = await benchImages(target.backends.length + 1, 5000);
  const send = (url: string) =>
    regionRequester(`${url}/v1/regions/ask`, {
      endpoint: "ask",
      question: ctx.question,
      maxTokens: options.maxTokens,
    });
  for (const [i, b] of target.backends.entries()) {
    const r = await send(b.url)(warm[i].png, warm[i].box);
    if (!r.ok) throw new Error(`warm-up request to ${b.name} failed: ${r.code}`);
  }
  const w = await send(target.url)(warm.at(-1)!.png, warm.at(-1)!.box);
  if (!w.ok) throw new Error(`warm-up request through ${target.url} failed: ${w.code}`);
}

async function runLoad(ctx: Context, target: ServerTarget, result: ClusterSetupResult): Promise<void> {
  const { options, log } = ctx;
  const send = regionRequester(`${target.url}/v1/regions/ask`, {
    endpoint: "ask",
    question: ctx.question,
    maxTokens: options.maxTokens,
  });
  const loadStart = await scrapeAll(target.backends);
  for (const [li, clients] of options.levels.entries()) {
    const lbRedisPids = target.pid ? [target.pid("haproxy"), target.pid("redis")] : [];
    const before = await scrapeAll(target.backends);
    const cpu0 = cpuSnapshot(lbRedisPids);
    const run = await runLoadLevel(send, ctx.levelImages[li], clients, options.seconds);
    const cpu1 = cpuSnapshot(lbRedisPids);
    const after = await scrapeAll(target.backends);
    const wall = run.wallSeconds;
    const answered = run.latencies.length;
    const serverCpu = delta(before, after, "region_vqa_process_cpu_seconds_total");
    const lbRedisCpu = cpu0.lbRedis === null || cpu1.lbRedis === null ? null : cpu1.lbRedis - cpu0.lbRedis;
    const cores = (seconds: number | null): number | null =>
      seconds === null ? null : round(seconds / wall, 2);
    const msPerAnswer = (seconds: number | null): number | null =>
      seconds === null || answered === 0 ? null : round((seconds * 1000) / answered, 1);
    const level: ClusterLevel = {
      ...summarizeLoadLevel(clients, run),
      p90Ms: round(quantile(run.latencies, 0.9), 0),
      perReplica: run.replicas,
      encoderRuns: delta(before, after, "region_vqa_pipeline_stage_duration_seconds_count", {
        stage: "encode",
      }),
      visionCacheHits:
        delta(before, after, "region_vqa_cache_lookups_total", {
          cache: "vision_embeddings",
          result: "hit",
        }) +
        delta(before, after, "region_vqa_cache_lookups_total", {
          cache: "shared_vision_embeddings",
          result: "hit",
        }),
      serverRssMiB: Math.round(
        after.reduce((s, m) => s + metricSum(m, "region_vqa_process_resident_memory_bytes"), 0) / 2 ** 20,
      ),
      cpuCores: {
        servers: cores(serverCpu),
        lbRedis: cores(lbRedisCpu),
        client: cores(cpu1.client - cpu0.client),
        machine: cores(cpu0.machine === null || cpu1.machine === null ? null : cpu1.machine - cpu0.machine),
      },
      cpuMsPerRequest: { servers: msPerAnswer(serverCpu), lbRedis: msPerAnswer(lbRedisCpu) },
      stagesMs: Object.fromEntries(
        ["decode", "preprocess", "encode", "project", "prefill"].map((stage) => {
          const n = delta(before, after, "region_vqa_pipeline_stage_duration_seconds_count", { stage });
          const sum = delta(before, after, "region_vqa_pipeline_stage_duration_seconds_sum", { stage });
          return [stage, n ? round((sum / n) * 1000, 1) : null];
        }),
      ),
    };
    result.levels.push(level);
    log(
      `  ${result.label}, ${clients} clients: ${level.requests} requests (${level.errors} errors) in ${level.wallSeconds} s, ` +
        `${level.requestsPerSecond} req/s, p50 ${level.latencyMs.p50} ms, p90 ${level.p90Ms} ms ` +
        `(${Object.entries(run.replicas)
          .map(([k, v]) => `${k} ${v}`)
          .join(", ")})`,
    );
  }
  if (result.redis) result.redisDuringLoad = opCosts(loadStart, await scrapeAll(target.backends));
}

/** Waits (up to 2 s) until the backends have sent `expected` more `feature_set` commands than in `before`. */
async function waitForSharedWrites(
  backends: readonly Backend[],
  before: MetricSample[][],
  expected: number,
): Promise<MetricSample[][]> {
  let now = await scrapeAll(backends);
  for (
    let i = 0;
    i < 40 && delta(before, now, `${SHARED_DURATION}_count`, { op: "feature_set" }) < expected;
    i++
  ) {
    await sleep(50);
    now = await scrapeAll(backends);
  }
  return now;
}

function addCounts(into: Record<string, number>, counts: Record<string, number>): void {
  for (const [k, n] of Object.entries(counts)) into[k] = (into[k] ?? 0) + n;
}

function commandCounts(before: MetricSample[][], after: MetricSample[][]): Record<string, number> {
  return Object.fromEntries(Object.entries(opCosts(before, after)).map(([op, c]) => [op, c.commands]));
}

function kvCounts(before: MetricSample[][], after: MetricSample[][]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const kv of ["new", "reused", "rebuilt"]) {
    const n = delta(before, after, "region_vqa_conversation_turns_total", { kv });
    if (n) out[kv] = n;
  }
  return out;
}

function perRequest(totals: Record<string, number>, requests: number): Record<string, number> {
  return Object.fromEntries(
    Object.entries(totals).map(([k, n]) => [k, round(n / Math.max(1, requests), 2) ?? 0]),
  );
}

/**
 * Redis commands of a first question and of its follow-up (KV cache on the replica), one request at a
 * time straight to replica-1, the metrics read around each (after the first question's background write).
 */
async function countCommands(ctx: Context, target: ServerTarget): Promise<RequestKindCost[]> {
  const n = ctx.options.commandSamples;
  const b = [target.backends[0]];
  const first = { commands: {} as Record<string, number>, kv: {} as Record<string, number> };
  const follow = { commands: {} as Record<string, number>, kv: {} as Record<string, number> };
  for (let i = 0; i < n; i++) {
    const m0 = await scrapeAll(b);
    const t = expectOk(
      await askTurn(b[0].url, { ...(await scene(1000 + i)), question: ctx.question }, ctx.options.maxTokens),
      "first question",
    );
    const m1 = await waitForSharedWrites(b, m0, 1);
    expectOk(
      await askTurn(b[0].url, { question: ctx.followUp }, ctx.options.maxTokens, t.conversationId!),
      "follow-up",
    );
    const m2 = await scrapeAll(b);
    addCounts(first.commands, commandCounts(m0, m1));
    addCounts(first.kv, kvCounts(m0, m1));
    addCounts(follow.commands, commandCounts(m1, m2));
    addCounts(follow.kv, kvCounts(m1, m2));
    await closeConversation(b[0].url, t.conversationId!);
  }
  return [
    {
      kind: "first question (new image)",
      requests: n,
      commands: perRequest(first.commands, n),
      kv: perRequest(first.kv, n),
    },
    {
      kind: "follow-up, KV cache on this replica",
      requests: n,
      commands: perRequest(follow.commands, n),
      kv: perRequest(follow.kv, n),
    },
  ];
}

interface RebuildSample {
  ownerMs: number;
  rebuiltMs: number;
  stageMs: number;
  prefillMs: number;
  redisMs: number;
  promptTokens: number | null;
  equal: boolean;
  reused: number;
  rebuilt: number;
  offOwner: number;
  commands: Record<string, number>;
  kv: Record<string, number>;
}

/** A conversation with `history` turns, started at `url` (a replica or the load balancer); its id and owner. */
async function conversationWithHistory(
  ctx: Context,
  url: string,
  sceneIndex: number,
  history: number,
): Promise<{ id: string; owner: string; offOwner: number }> {
  const first = expectOk(
    await askTurn(url, { ...(await scene(sceneIndex)), question: ctx.question }, ctx.options.maxTokens),
    "first question",
  );
  const id = first.conversationId!;
  let offOwner = 0;
  for (let t = 1; t < history; t++) {
    const q = HISTORY_QUESTIONS[(t - 1) % HISTORY_QUESTIONS.length];
    const r = expectOk(await askTurn(url, { question: q }, ctx.options.maxTokens, id), "history turn");
    if (r.replica !== first.replica) offOwner++;
  }
  return { id, owner: first.replica!, offOwner };
}

/**
 * Twin conversations (same image, region and history) on one replica, the owner; the same follow-up
 * then goes to the owner for one twin (KV cache reused) and to the other replica for the other twin
 * (rebuilt from Redis). Separate twins keep each conversation's history linear: asking one
 * conversation on both replicas would make the second replica rebuild it again, one turn later.
 */
async function rebuildSample(
  ctx: Context,
  target: ServerTarget,
  sceneIndex: number,
  history: number,
): Promise<RebuildSample> {
  const ownerB = target.backends[sceneIndex % target.backends.length];
  const otherB = target.backends.find((b) => b !== ownerB)!;
  const kept = await conversationWithHistory(ctx, ownerB.url, sceneIndex, history);
  const moved = await conversationWithHistory(ctx, ownerB.url, sceneIndex, history);
  if (kept.owner !== ownerB.name || moved.owner !== ownerB.name) {
    throw new Error(`conversations asked of ${ownerB.name} were answered by another replica`);
  }
  const max = ctx.options.maxTokens;

  let before = await scrapeAll([otherB]);
  const rebuilt = expectOk(
    await askTurn(otherB.url, { question: ctx.followUp }, max, moved.id),
    "rebuilt follow-up",
  );
  let after = await scrapeAll([otherB]);
  const stage = (s: string, kind: "sum" | "count") =>
    delta(before, after, `region_vqa_pipeline_stage_duration_seconds_${kind}`, { stage: s });
  if (stage("rebuild", "count") !== 1)
    throw new Error(`${otherB.name} did not rebuild conversation ${moved.id}`);
  const costs = opCosts(before, after);
  const sample: Omit<RebuildSample, "ownerMs" | "equal" | "reused"> = {
    rebuiltMs: rebuilt.ms,
    stageMs: stage("rebuild", "sum") * 1000,
    prefillMs: stage("prefill", "sum") * 1000,
    redisMs:
      ["transcript_get", "feature_get"].reduce(
        (s, op) => s + delta(before, after, `${SHARED_DURATION}_sum`, { op }),
        0,
      ) * 1000,
    promptTokens: rebuilt.promptTokens ?? null,
    rebuilt: delta(before, after, "region_vqa_conversation_turns_total", { kv: "rebuilt" }),
    offOwner: kept.offOwner + moved.offOwner,
    commands: Object.fromEntries(Object.entries(costs).map(([op, c]) => [op, c.commands])),
    kv: kvCounts(before, after),
  };

  before = await scrapeAll([ownerB]);
  const owned = expectOk(
    await askTurn(ownerB.url, { question: ctx.followUp }, max, kept.id),
    "owner follow-up",
  );
  after = await scrapeAll([ownerB]);
  const reused = delta(before, after, "region_vqa_conversation_turns_total", { kv: "reused" });

  await closeConversation(otherB.url, moved.id);
  await closeConversation(ownerB.url, moved.id);
  await closeConversation(ownerB.url, kept.id);
  return { ...sample, ownerMs: owned.ms, equal: owned.answer === rebuilt.answer, reused };
}

async function runRebuild(
  ctx: Context,
  target: ServerTarget,
): Promise<{ rows: RebuildRow[]; perKind: RequestKindCost }> {
  const rows: RebuildRow[] = [];
  const commandTotals: Record<string, number> = {};
  const kvTotals: Record<string, number> = {};
  let count = 0;
  let sceneIndex = 2000;
  for (const history of ctx.options.histories) {
    const samples: RebuildSample[] = [];
    for (let r = 0; r < ctx.options.repeats; r++)
      samples.push(await rebuildSample(ctx, target, sceneIndex++, history));
    for (const s of samples) {
      addCounts(commandTotals, s.commands);
      addCounts(kvTotals, s.kv);
      count++;
    }
    const row: RebuildRow = {
      history,
      conversations: samples.length,
      ownerMs: spread(samples.map((s) => s.ownerMs)),
      rebuiltMs: spread(samples.map((s) => s.rebuiltMs)),
      extraMs: spread(samples.map((s) => s.rebuiltMs - s.ownerMs)),
      rebuildStageMs: spread(samples.map((s) => s.stageMs)),
      rebuildPrefillMs: spread(samples.map((s) => s.prefillMs)),
      rebuildRedisMs: spread(
        samples.map((s) => s.redisMs),
        2,
      ),
      promptTokens: samples[0]?.promptTokens ?? null,
      kv: {
        reused: samples.reduce((a, s) => a + s.reused, 0),
        rebuilt: samples.reduce((a, s) => a + s.rebuilt, 0),
      },
      answersEqual: samples.filter((s) => s.equal).length,
      historyOffOwner: samples.reduce((a, s) => a + s.offOwner, 0),
    };
    rows.push(row);
    ctx.log(
      `  ${history} previous turn(s): owner ${row.ownerMs.median} ms, rebuilt ${row.rebuiltMs.median} ms ` +
        `(rebuild stage ${row.rebuildStageMs.median} ms, prefill ${row.rebuildPrefillMs.median} ms), ` +
        `answers equal ${row.answersEqual}/${row.conversations}`,
    );
  }
  return {
    rows,
    perKind: {
      kind: "follow-up, rebuilt from Redis on another replica",
      requests: count,
      commands: perRequest(commandTotals, count),
      kv: perRequest(kvTotals, count),
    },
  };
}

/** SIGKILL the owner of a conversation, then its next question through the load balancer. */
async function runFailover(ctx: Context, target: ServerTarget): Promise<FailoverResult> {
  const history = 3;
  const max = ctx.options.maxTokens;
  const s = await scene(3000);
  // Two conversations with the same image and history on the same replica: one to continue after the
  // kill, its twin answered by that replica before it dies (the reference).
  const opened: Turn[] = [];
  let pair: [Turn, Turn] | undefined;
  for (let i = 0; i < 6 && !pair; i++) {
    const t = expectOk(await askTurn(target.url, { ...s, question: ctx.question }, max), "first question");
    const twin = opened.find((o) => o.replica === t.replica);
    if (twin) pair = [twin, t];
    opened.push(t);
  }
  if (!pair) throw new Error("the load balancer never sent two new conversations to the same replica");
  const [a, ref] = pair;
  const victim = a.replica!;
  const survivor = target.backends.find((b) => b.name !== victim)!;
  for (const o of opened) {
    if (o !== a && o !== ref) await closeConversation(target.url, o.conversationId!);
  }
  for (const conv of [a, ref]) {
    for (let t = 1; t < history; t++) {
      const r = expectOk(
        await askTurn(target.url, { question: HISTORY_QUESTIONS[t - 1] }, max, conv.conversationId!),
        "history turn",
      );
      if (r.replica !== victim) throw new Error(`history turn served by ${r.replica}, not ${victim}`);
    }
  }
  const reference = expectOk(
    await askTurn(target.url, { question: ctx.followUp }, max, ref.conversationId!),
    "reference follow-up",
  );
  const before = await scrapeAll([survivor]);
  process.kill(target.pid!(victim), "SIGKILL");
  const afterKill = await askTurn(target.url, { question: ctx.followUp }, max, a.conversationId!);
  const after = await scrapeAll([survivor]);
  const next = await askTurn(target.url, { question: HISTORY_QUESTIONS[3] }, max, a.conversationId!);
  const result: FailoverResult = {
    history,
    victim,
    survivor: survivor.name,
    afterKill: {
      ms: round(afterKill.ms, 1) ?? 0,
      status: afterKill.status,
      replica: afterKill.replica,
      turns: afterKill.turns ?? null,
    },
    rebuilt: delta(before, after, "region_vqa_conversation_turns_total", { kv: "rebuilt" }),
    answerEqualsReference: afterKill.status === 200 && afterKill.answer === reference.answer,
    next: { ms: round(next.ms, 1) ?? 0, status: next.status, replica: next.replica },
  };
  ctx.log(
    `  failover: ${victim} killed; follow-up through the load balancer ${result.afterKill.ms} ms on ${result.afterKill.replica} ` +
      `(HTTP ${result.afterKill.status}, rebuilt ${result.rebuilt}, same answer as the reference: ${result.answerEqualsReference}); ` +
      `next ${result.next.ms} ms on ${result.next.replica}`,
  );
  return result;
}

/** Mean stored sizes of the feature and transcript values in the cluster's Redis. */
async function valueSizes(port: number): Promise<ClusterBenchResult["redis"]["valueBytes"]> {
  const redis = new Redis({ host: "127.0.0.1", port, lazyConnect: true, maxRetriesPerRequest: 1 });
  try {
    await redis.connect();
    const sizes = async (pattern: string): Promise<number[]> => {
      const out: number[] = [];
      let cursor = "0";
      do {
        const [next, keys] = await redis.scan(cursor, "MATCH", pattern, "COUNT", 500);
        cursor = next;
        for (const k of keys) out.push(await redis.strlen(k));
      } while (cursor !== "0");
      return out;
    };
    const features = await sizes("region-vqa:features:*");
    const transcripts = await sizes("region-vqa:conversation:*");
    return {
      feature: round(mean(features), 0),
      transcript: round(mean(transcripts), 0),
      features: features.length,
      transcripts: transcripts.length,
    };
  } finally {
    redis.disconnect();
  }
}

/** `redis-benchmark` output (`-q`): "SET: 12345.68 requests per second, p50=0.207 msec". */
export function parseRedisBenchmark(output: string): RedisBenchmarkRun["results"] {
  const results: RedisBenchmarkRun["results"] = [];
  for (const line of output.split(/[\r\n]+/)) {
    const m = /^\s*([A-Z][\w ()-]*?):\s+([\d.]+) requests per second(?:, p50=([\d.]+) msec)?/.exec(line);
    if (m) results.push({ test: m[1], requestsPerSecond: Number(m[2]), p50Ms: m[3] ? Number(m[3]) : null });
  }
  return results;
}

function redisBenchmark(port: number, extra: string[]): RedisBenchmarkRun {
  const args = [
    "-h",
    "127.0.0.1",
    "-p",
    String(port),
    "-q",
    "-n",
    "20000",
    "-t",
    "get,set",
    "-P",
    "1",
    ...extra,
  ];
  const command = `redis-benchmark ${args.join(" ")}`;
  const r = spawnSync("redis-benchmark", args, { encoding: "utf8", timeout: 120_000 });
  if (r.error || r.status !== 0) {
    return { command, results: [], error: r.error?.message ?? `exit ${r.status}: ${r.stderr}` };
  }
  return { command, results: parseRedisBenchmark(r.stdout) };
}

const SETUPS: Record<SetupKey, { label: string; replicas: number; loadBalancer: boolean; redis: boolean }> = {
  baseline: { label: "plain serve (no Redis, no LB)", replicas: 1, loadBalancer: false, redis: false },
  "replicas-1": { label: "1 replica + HAProxy + Redis", replicas: 1, loadBalancer: true, redis: true },
  "replicas-2": { label: "2 replicas + HAProxy + Redis", replicas: 2, loadBalancer: true, redis: true },
};

export async function runClusterBench(
  options: ClusterBenchOptions,
  log: (message: string) => void,
): Promise<ClusterBenchResult> {
  const missing = clusterPrerequisites();
  if (missing.length) throw new Error(`the cluster bench needs ${missing.join(", ")}`);
  const models = await resolveModelSet("shapes", { fullLayers: 1, threads: options.threads });
  const levelImages: BenchImage[][] = [];
  let seed = 10_000;
  for (const clients of options.levels) {
    const budget = Math.max(options.requests, clients);
    levelImages.push(await benchImages(budget, seed));
    seed += budget;
  }
  const ctx: Context = { options, question: models.question, followUp: models.followUp, log, levelImages };
  const loadStart = loadavg();
  const setups: ClusterSetupResult[] = [];
  let rebuild: RebuildRow[] = [];
  let failover: FailoverResult | undefined;
  const redis: ClusterBenchResult["redis"] = {
    perKind: [],
    idle: {},
    valueBytes: { feature: null, transcript: null, features: 0, transcripts: 0 },
    benchmarks: [],
  };
  const keys = options.setups ?? (["baseline", "replicas-1", "replicas-2"] as SetupKey[]);

  await withCleanup(async () => {
    for (const key of keys) {
      const setup = SETUPS[key];
      const result: ClusterSetupResult = {
        key,
        ...setup,
        readyMs: 0,
        loadAverage: { start: loadavg(), end: [] },
        levels: [],
        pids: [],
      };
      log(`${setup.label}: starting`);
      const target = setup.loadBalancer
        ? await startCluster(setup.replicas, options)
        : await startPlainServer(options);
      try {
        result.readyMs = Math.round(target.readyMs);
        result.pids = target.pids();
        log(`${setup.label}: ready in ${(target.readyMs / 1000).toFixed(1)} s on ${target.url}`);
        await warmUp(ctx, target);
        // On two replicas the sequential measurements come first, on fresh replicas (every conversation
        // they open is closed again), then the load, then the failover (it kills a replica).
        if (key === "replicas-2") {
          log("Redis commands per request kind (one request at a time, straight to replica-1)");
          const idleStart = await scrapeAll(target.backends);
          redis.perKind.push(...(await countCommands(ctx, target)));
          log(
            `rebuild vs KV cache reuse: ${options.histories.join(", ")} previous turns, ${options.repeats} each`,
          );
          const rb = await runRebuild(ctx, target);
          rebuild = rb.rows;
          redis.perKind.push(rb.perKind);
          redis.idle = opCosts(idleStart, await scrapeAll(target.backends));
          if (options.redisBenchmark) {
            if (spawnSync("sh", ["-c", "command -v redis-benchmark"]).status === 0) {
              log("redis-benchmark against the cluster's redis-server");
              redis.benchmarks.push(redisBenchmark(target.redisPort!, []));
              redis.benchmarks.push(redisBenchmark(target.redisPort!, ["-c", "1"]));
            } else {
              redis.benchmarks.push({ command: "redis-benchmark", results: [], error: "not installed" });
            }
          }
        }
        await runLoad(ctx, target, result);
        if (key === "replicas-2") {
          redis.valueBytes = await valueSizes(target.redisPort!);
          if (options.failover) failover = await runFailover(ctx, target);
        }
      } finally {
        result.loadAverage.end = loadavg();
        await target.stop();
        log(`${setup.label}: stopped`);
      }
      setups.push(result);
    }
  });
  return {
    models: { description: models.description, question: models.question, followUp: models.followUp },
    options,
    cores: os.availableParallelism(),
    loadAverage: { start: loadStart, end: loadavg() },
    imageSize: "640x480 PNG",
    setups,
    rebuild,
    failover,
    redis,
  };
}
