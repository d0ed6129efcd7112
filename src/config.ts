/**
 * One typed configuration object for the server, built from (in this order, later wins):
 * built-in defaults, a JSON config file, `REGION_VQA_*` environment variables, command-line flags.
 */
import { readFileSync } from "node:fs";
import path from "node:path";
import { RegionVqaError } from "./common/errors.js";
import { ORT_DEVICES } from "./common/ort/index.js";
import { LLM_GPUS } from "./llm/index.js";
import type { ModelConfig } from "./models/index.js";
import { PIPELINE_DEFAULTS } from "./pipeline/options.js";

export type { ModelConfig } from "./models/index.js";

export interface ServerLimits {
  /** Largest request body in bytes (JSON with base64 images, or the whole multipart body). */
  maxBodyBytes: number;
  /** Largest image (and mask) in pixels, width x height. */
  maxImagePixels: number;
  /** Most regions in one caption request. */
  maxRegions: number;
  /** Longest question (or chat message text) in characters. */
  maxQuestionChars: number;
  /** Highest `max_tokens` a request may ask for; also the default when a request gives none. */
  maxTokens: number;
  /** Most messages in one chat-completions request. */
  maxMessages: number;
  /** Most polygon vertices in one region (all rings together). */
  maxPolygonPoints: number;
  /** Conversations held open at once (each holds an LLM sequence); more wait for a free one. */
  maxConversations: number;
  /** An idle conversation is closed after this many milliseconds. */
  conversationTtlMs: number;
  /** Longest image side in pixels (images are padded to a square before encoding). */
  maxImageSide: number;
  /** Pipeline requests (caption, ask, chat completions) served at once; capped by maxConversations. */
  maxConcurrentRequests: number;
  /** Pipeline requests that may wait for a turn; one more is refused with 503 and Retry-After. 0 = none wait. */
  maxQueue: number;
  /** Deadline of one pipeline request from its admission (queue wait included) to its last byte. */
  requestTimeoutMs: number;
  /** The whole request (headers and body) must arrive within this long, else the connection is closed. */
  receiveTimeoutMs: number;
}

export interface RemoteImageConfig {
  /** URL prefixes (e.g. "https://images.example.com/") that `image_url` may point at. Empty = none. */
  allow: string[];
  maxBytes: number;
  timeoutMs: number;
}

/** State shared by replicas through Redis (off without `url`). See src/shared-state and docs/scale-out.md. */
export interface SharedStateConfig {
  /** `redis://host:port[/db]`; unset = no shared state (one process, as before). */
  url?: string;
  /** Prefix of every key (several deployments may share a Redis). */
  keyPrefix: string;
  /** Deadline of one Redis command; past it the request goes on from local state. */
  commandTimeoutMs: number;
  /** Lifetime of a shared region embedding. */
  featureTtlMs: number;
  /** Lifetime of a conversation transcript after its last turn. */
  transcriptTtlMs: number;
  /** Element type of shared embeddings (fp16 halves the bytes; every replica uses the rounded values). */
  featureDtype: "fp16" | "fp32";
}

export interface ServerConfig {
  host: string;
  port: number;
  model: ModelConfig;
  /** Bearer key required on /v1/* when set. */
  apiKey?: string;
  /** Origins allowed by CORS; empty = CORS off. "*" allows any origin. */
  corsOrigins: string[];
  limits: ServerLimits;
  remoteImages: RemoteImageConfig;
  /** On SIGTERM/SIGINT, in-flight requests get this long to finish before they are aborted. */
  shutdownGraceMs: number;
  /** Fastify request logging. */
  logLevel: "fatal" | "error" | "warn" | "info" | "debug" | "trace" | "silent";
  /** This replica's name in the X-Region-VQA-Replica header; default its listen address host:port. */
  replicaName?: string;
  sharedState: SharedStateConfig;
}

/** A partial config: what a file, the environment or flags may set. */
export type ServerConfigInput = Partial<
  Omit<ServerConfig, "limits" | "remoteImages" | "model" | "sharedState">
> & {
  limits?: Partial<ServerLimits>;
  sharedState?: Partial<SharedStateConfig>;
  remoteImages?: Partial<RemoteImageConfig>;
  model?: Partial<ModelConfig>;
};

export const defaultConfig: ServerConfig = {
  host: "127.0.0.1",
  port: 8080,
  model: {},
  corsOrigins: [],
  limits: {
    maxBodyBytes: 20 * 1024 * 1024,
    maxImagePixels: 4096 * 4096,
    maxRegions: PIPELINE_DEFAULTS.maxRegions,
    maxQuestionChars: PIPELINE_DEFAULTS.maxQuestionChars,
    maxTokens: 512,
    maxMessages: 64,
    maxPolygonPoints: 10_000,
    maxConversations: PIPELINE_DEFAULTS.maxConversations,
    conversationTtlMs: PIPELINE_DEFAULTS.conversationTtlMs,
    maxImageSide: 8192,
    maxConcurrentRequests: 4,
    maxQueue: 16,
    requestTimeoutMs: 120_000,
    receiveTimeoutMs: 30_000,
  },
  remoteImages: { allow: [], maxBytes: 10 * 1024 * 1024, timeoutMs: 10_000 },
  shutdownGraceMs: 30_000,
  logLevel: "warn",
  sharedState: {
    keyPrefix: "region-vqa:",
    commandTimeoutMs: 250,
    featureTtlMs: 60 * 60_000,
    transcriptTtlMs: 24 * 60 * 60_000,
    featureDtype: "fp16",
  },
};

/** Each environment variable, the config field it sets and how it is read. Listed by `serve --help`. */
export const environmentVariables: Array<{ name: string; field: string; help: string }> = [
  { name: "REGION_VQA_HOST", field: "host", help: "address to listen on" },
  { name: "REGION_VQA_PORT", field: "port", help: "port to listen on (0 = any free port)" },
  { name: "REGION_VQA_MODEL", field: "model.preset", help: "model preset name or folder (default: bundled)" },
  { name: "REGION_VQA_VISION", field: "model.vision", help: "Alpha-CLIP vision model folder" },
  { name: "REGION_VQA_PROJECTOR", field: "model.projector", help: "projector file or folder" },
  { name: "REGION_VQA_LLM", field: "model.llm", help: "LLM .gguf file" },
  {
    name: "REGION_VQA_SEGMENTER",
    field: "model.segmenter",
    help: "segmenter (SAM) folder for point regions",
  },
  { name: "REGION_VQA_DEVICE", field: "model.device", help: "vision device: auto|webgpu|cuda|cpu" },
  { name: "REGION_VQA_GPU", field: "model.gpu", help: "llama.cpp backend: auto|cuda|vulkan|metal|false" },
  { name: "REGION_VQA_THREADS", field: "model.visionThreads", help: "ONNX Runtime threads" },
  { name: "REGION_VQA_LLM_THREADS", field: "model.llmThreads", help: "llama.cpp threads" },
  { name: "REGION_VQA_CONTEXT_SIZE", field: "model.contextSize", help: "LLM context per conversation" },
  {
    name: "REGION_VQA_IMAGING_THREADS",
    field: "model.imagingThreads",
    help: "threads per imaging job (default: REGION_VQA_THREADS, else up to 4)",
  },
  { name: "REGION_VQA_IMAGING_JOBS", field: "model.imagingJobs", help: "imaging jobs at once (default 2)" },
  {
    name: "REGION_VQA_ENCODER_BATCH",
    field: "model.encoderBatchRegions",
    help: "most regions per vision-encoder run across requests (1 = off; default 1 on the CPU, 16 on GPUs)",
  },
  {
    name: "REGION_VQA_ENCODER_BATCH_WAIT_MS",
    field: "model.encoderBatchWaitMs",
    help: "how long a request waits for others to batch with (default 0)",
  },
  { name: "REGION_VQA_API_KEY", field: "apiKey", help: "bearer key required on /v1/* (off when unset)" },
  {
    name: "REGION_VQA_CORS_ORIGINS",
    field: "corsOrigins",
    help: "comma-separated CORS origins (off when unset)",
  },
  { name: "REGION_VQA_MAX_BODY_BYTES", field: "limits.maxBodyBytes", help: "largest request body in bytes" },
  { name: "REGION_VQA_MAX_IMAGE_PIXELS", field: "limits.maxImagePixels", help: "largest image in pixels" },
  { name: "REGION_VQA_MAX_REGIONS", field: "limits.maxRegions", help: "most regions per caption request" },
  { name: "REGION_VQA_MAX_QUESTION_CHARS", field: "limits.maxQuestionChars", help: "longest question" },
  { name: "REGION_VQA_MAX_TOKENS", field: "limits.maxTokens", help: "highest max_tokens (and the default)" },
  { name: "REGION_VQA_MAX_MESSAGES", field: "limits.maxMessages", help: "most messages per chat request" },
  { name: "REGION_VQA_MAX_POLYGON_POINTS", field: "limits.maxPolygonPoints", help: "most polygon vertices" },
  {
    name: "REGION_VQA_MAX_CONVERSATIONS",
    field: "limits.maxConversations",
    help: "conversations held open at once (LLM sequences)",
  },
  {
    name: "REGION_VQA_CONVERSATION_TTL_MS",
    field: "limits.conversationTtlMs",
    help: "idle conversations close after this long",
  },
  { name: "REGION_VQA_MAX_IMAGE_SIDE", field: "limits.maxImageSide", help: "longest image side in pixels" },
  {
    name: "REGION_VQA_MAX_CONCURRENT",
    field: "limits.maxConcurrentRequests",
    help: "pipeline requests served at once (at most max conversations)",
  },
  {
    name: "REGION_VQA_MAX_QUEUE",
    field: "limits.maxQueue",
    help: "pipeline requests that may wait; more get 503 + Retry-After",
  },
  {
    name: "REGION_VQA_REQUEST_TIMEOUT_MS",
    field: "limits.requestTimeoutMs",
    help: "deadline of one pipeline request, queue wait included",
  },
  {
    name: "REGION_VQA_RECEIVE_TIMEOUT_MS",
    field: "limits.receiveTimeoutMs",
    help: "time allowed to send a whole request (slow clients are cut off)",
  },
  {
    name: "REGION_VQA_SHUTDOWN_GRACE_MS",
    field: "shutdownGraceMs",
    help: "on SIGTERM, in-flight requests may finish within this long",
  },
  {
    name: "REGION_VQA_REMOTE_IMAGE_ALLOW",
    field: "remoteImages.allow",
    help: "comma-separated URL prefixes image_url may fetch (none when unset)",
  },
  {
    name: "REGION_VQA_REMOTE_IMAGE_MAX_BYTES",
    field: "remoteImages.maxBytes",
    help: "largest fetched image",
  },
  { name: "REGION_VQA_REMOTE_IMAGE_TIMEOUT_MS", field: "remoteImages.timeoutMs", help: "fetch time limit" },
  { name: "REGION_VQA_LOG_LEVEL", field: "logLevel", help: "fatal|error|warn|info|debug|trace|silent" },
  {
    name: "REGION_VQA_REPLICA",
    field: "replicaName",
    help: "name in the X-Region-VQA-Replica header (default host:port)",
  },
  {
    name: "REGION_VQA_REDIS_URL",
    field: "sharedState.url",
    help: "Redis shared by replicas (features, transcripts); off when unset",
  },
  { name: "REGION_VQA_REDIS_PREFIX", field: "sharedState.keyPrefix", help: "prefix of the Redis keys" },
  {
    name: "REGION_VQA_REDIS_TIMEOUT_MS",
    field: "sharedState.commandTimeoutMs",
    help: "deadline of one Redis command",
  },
  {
    name: "REGION_VQA_SHARED_FEATURE_TTL_MS",
    field: "sharedState.featureTtlMs",
    help: "lifetime of a shared region embedding",
  },
  {
    name: "REGION_VQA_TRANSCRIPT_TTL_MS",
    field: "sharedState.transcriptTtlMs",
    help: "lifetime of a transcript after its last turn",
  },
  {
    name: "REGION_VQA_SHARED_FEATURE_DTYPE",
    field: "sharedState.featureDtype",
    help: "fp16|fp32 element type of shared embeddings",
  },
];

const numericFields = new Set([
  "port",
  "model.visionThreads",
  "model.llmThreads",
  "model.contextSize",
  "model.imagingThreads",
  "model.imagingJobs",
  "model.encoderBatchRegions",
  "model.encoderBatchWaitMs",
  "limits.maxBodyBytes",
  "limits.maxImagePixels",
  "limits.maxRegions",
  "limits.maxQuestionChars",
  "limits.maxTokens",
  "limits.maxMessages",
  "limits.maxPolygonPoints",
  "limits.maxConversations",
  "limits.conversationTtlMs",
  "limits.maxImageSide",
  "limits.maxConcurrentRequests",
  "limits.maxQueue",
  "limits.requestTimeoutMs",
  "limits.receiveTimeoutMs",
  "shutdownGraceMs",
  "remoteImages.maxBytes",
  "remoteImages.timeoutMs",
  "sharedState.commandTimeoutMs",
  "sharedState.featureTtlMs",
  "sharedState.transcriptTtlMs",
]);
const listFields = new Set(["corsOrigins", "remoteImages.allow"]);

function setField(target: Record<string, unknown>, field: string, value: unknown): void {
  const parts = field.split(".");
  let obj = target;
  for (const part of parts.slice(0, -1)) {
    if (typeof obj[part] !== "object" || obj[part] === null) obj[part] = {};
    obj = obj[part] as Record<string, unknown>;
  }
  obj[parts[parts.length - 1]] = value;
}

function parseValue(field: string, raw: string, source: string): unknown {
  if (numericFields.has(field)) {
    const n = Number(raw);
    if (raw.trim() === "" || !Number.isInteger(n) || n < 0) {
      throw new RegionVqaError("invalid_request", `${source} must be a whole number >= 0, got "${raw}"`);
    }
    return n;
  }
  if (listFields.has(field)) {
    return raw
      .split(",")
      .map((s) => s.trim())
      .filter((s) => s.length > 0);
  }
  return raw;
}

/** Reads `REGION_VQA_*` variables into a partial config. */
export function configFromEnvironment(env: NodeJS.ProcessEnv = process.env): ServerConfigInput {
  const out: Record<string, unknown> = {};
  for (const { name, field } of environmentVariables) {
    const raw = env[name];
    if (raw === undefined || raw === "") continue;
    setField(out, field, parseValue(field, raw, name));
  }
  return out as ServerConfigInput;
}

/** Reads a JSON config file (same shape as `ServerConfig`, every field optional). */
export function configFromFile(file: string): ServerConfigInput {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    throw new RegionVqaError("invalid_request", `cannot read config file ${file}: ${(err as Error).message}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new RegionVqaError("invalid_request", `config file ${file} is not JSON: ${(err as Error).message}`);
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    throw new RegionVqaError("invalid_request", `config file ${file} must hold a JSON object`);
  }
  // Relative model paths in a file are relative to the file, not to the working directory.
  const input = parsed as ServerConfigInput;
  if (input.model && typeof input.model === "object") {
    const dir = path.dirname(path.resolve(file));
    for (const key of ["vision", "projector", "llm", "segmenter", "text"] as const) {
      const p = input.model[key];
      if (typeof p === "string") input.model[key] = path.resolve(dir, p);
    }
  }
  return input;
}

function mergeInto(base: ServerConfig, layer: ServerConfigInput | undefined): ServerConfig {
  if (!layer) return base;
  const defined = <T extends object>(o: T | undefined): Partial<T> =>
    Object.fromEntries(Object.entries(o ?? {}).filter(([, v]) => v !== undefined)) as Partial<T>;
  const { limits, remoteImages, model, sharedState, ...rest } = layer;
  return {
    ...base,
    ...defined(rest),
    limits: { ...base.limits, ...defined(limits) },
    sharedState: { ...base.sharedState, ...defined(sharedState) },
    remoteImages: { ...base.remoteImages, ...defined(remoteImages) },
    model: { ...base.model, ...defined(model) },
  };
}

function validate(config: ServerConfig): ServerConfig {
  const problems: string[] = [];
  if (!Number.isInteger(config.port) || config.port < 0 || config.port > 65535) {
    problems.push(`port must be 0..65535, got ${config.port}`);
  }
  for (const key of [
    "visionThreads",
    "llmThreads",
    "contextSize",
    "imagingThreads",
    "imagingJobs",
    "encoderBatchRegions",
  ] as const) {
    const v = config.model[key];
    if (v !== undefined && (!Number.isInteger(v) || v < 1))
      problems.push(`model.${key} must be a whole number >= 1`);
  }
  const wait = config.model.encoderBatchWaitMs;
  if (wait !== undefined && (!Number.isInteger(wait) || wait < 0))
    problems.push("model.encoderBatchWaitMs must be a whole number >= 0");
  const { device, gpu } = config.model;
  if (device !== undefined && !ORT_DEVICES.includes(device))
    problems.push(`model.device must be ${ORT_DEVICES.join(", ")}`);
  // The environment, and a JSON file too, may say "false" as text.
  if ((gpu as unknown) === "false") config.model.gpu = false;
  if (config.model.gpu !== undefined && !LLM_GPUS.includes(config.model.gpu)) {
    problems.push(`model.gpu must be ${LLM_GPUS.join(", ")}`);
  }
  if (Boolean(config.model.vision) !== Boolean(config.model.llm)) {
    problems.push("give both model.vision and model.llm (or neither, for a preset)");
  }
  for (const [key, value] of Object.entries(config.limits)) {
    // A queue of 0 is meaningful: refuse at once when every slot is busy.
    const least = key === "maxQueue" ? 0 : 1;
    if (!Number.isInteger(value) || value < least)
      problems.push(`limits.${key} must be a whole number >= ${least}`);
  }
  if (!Number.isInteger(config.shutdownGraceMs) || config.shutdownGraceMs < 0) {
    problems.push("shutdownGraceMs must be a whole number >= 0");
  }
  for (const key of ["maxBytes", "timeoutMs"] as const) {
    const v = config.remoteImages[key];
    if (!Number.isInteger(v) || v < 1) problems.push(`remoteImages.${key} must be a whole number >= 1`);
  }
  if (!Array.isArray(config.corsOrigins) || !config.corsOrigins.every((o) => typeof o === "string")) {
    problems.push("corsOrigins must be a list of strings");
  }
  if (!Array.isArray(config.remoteImages.allow))
    problems.push("remoteImages.allow must be a list of strings");
  for (const prefix of config.remoteImages.allow) {
    if (!/^https?:\/\/[^/]+\//.test(prefix)) {
      problems.push(
        `remoteImages.allow entries must be http(s) URL prefixes ending after a host and "/": "${prefix}"`,
      );
    }
  }
  const shared = config.sharedState;
  if (shared.url !== undefined && !/^rediss?:\/\/[^/]/.test(shared.url)) {
    problems.push(`sharedState.url must be a redis:// or rediss:// URL, got "${shared.url}"`);
  }
  if (shared.featureDtype !== "fp16" && shared.featureDtype !== "fp32") {
    problems.push("sharedState.featureDtype must be fp16 or fp32");
  }
  for (const key of ["commandTimeoutMs", "featureTtlMs", "transcriptTtlMs"] as const) {
    if (!Number.isInteger(shared[key]) || shared[key] < 1)
      problems.push(`sharedState.${key} must be a whole number >= 1`);
  }
  if (typeof shared.keyPrefix !== "string") problems.push("sharedState.keyPrefix must be text");
  if (problems.length > 0) {
    throw new RegionVqaError("invalid_request", `bad configuration: ${problems.join("; ")}`);
  }
  return config;
}

/** Defaults, then the file, then the environment, then flags. */
export function loadConfig(
  options: {
    file?: string;
    env?: NodeJS.ProcessEnv;
    flags?: ServerConfigInput;
  } = {},
): ServerConfig {
  let config = structuredClone(defaultConfig);
  if (options.file) config = mergeInto(config, configFromFile(options.file));
  config = mergeInto(config, configFromEnvironment(options.env ?? process.env));
  config = mergeInto(config, options.flags);
  return validate(config);
}
