/**
 * The Fastify application: route groups as encapsulated plugins over one `RegionVqaPipeline`,
 * an OpenAPI document (/docs/json) with a docs page (/docs), metrics, and the chat UI at `/`.
 */
import { isUtf8 } from "node:buffer";
import type { AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import fastifyCors from "@fastify/cors";
import fastifyMultipart from "@fastify/multipart";
import fastifySwagger from "@fastify/swagger";
import fastifySwaggerUi from "@fastify/swagger-ui";
import Fastify, { type FastifyInstance } from "fastify";
import { RegionVqaError } from "../common/errors.js";
import { defaultConfig, type ServerConfig } from "../config.js";
import type { RegionVqaPipeline } from "../pipeline/types.js";
import type { SharedStateStatus } from "../shared-state/index.js";
import { installErrorHandlers } from "./errors.js";
import { PipelineHolder } from "./http.js";
import { ServerMetrics } from "./metrics.js";
import classifyRoutes from "./routes/classify.js";
import embeddingsRoutes from "./routes/embeddings.js";
import openAiRoutes from "./routes/openai.js";
import opsRoutes from "./routes/ops.js";
import regionsRoutes, { conversationRoutes } from "./routes/regions.js";
import segmentRoutes from "./routes/segment.js";
import uiRoutes from "./routes/ui.js";
import { RequestScheduler } from "./scheduler.js";
import { ajvBinaryFilePlugin, sharedSchemas } from "./schemas.js";

export interface BuildServerOptions {
  /** The pipeline, or a promise of it: the server can listen (and answer /healthz) while models load. */
  pipeline: RegionVqaPipeline | Promise<RegionVqaPipeline>;
  config?: ServerConfig;
  /** Shared with the pipeline so that it can report stage timings; made here when absent. */
  metrics?: ServerMetrics;
  /** Built UI folder; defaults to dist/ui at the package root. */
  uiRoot?: string;
  /** Dispose the pipeline when the server closes (default true: the server owns it). */
  disposePipelineOnClose?: boolean;
  /** The shared state (Redis) the pipeline uses, for /readyz and /metrics; its owner closes it. */
  sharedState?: SharedStateHealth;
}

/** What the server reads of the shared state: its health. */
export interface SharedStateHealth {
  status(): SharedStateStatus;
}

/** Each response names the replica that served it (a load balancer's logs and tests can tell them apart). */
export const REPLICA_HEADER = "x-region-vqa-replica";

/** Each server's scheduler, for `closeGracefully`. */
const schedulers = new WeakMap<FastifyInstance, RequestScheduler>();

const packageRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
export const defaultUiRoot = path.join(packageRoot, "dist", "ui");

export async function buildServer(options: BuildServerOptions): Promise<FastifyInstance> {
  const config = options.config ?? defaultConfig;
  const metrics = options.metrics ?? new ServerMetrics();
  const pipeline = new PipelineHolder(options.pipeline);
  void pipeline.settled().then((p) => {
    if (!p) return;
    metrics.setDevices(p.models.devices);
    const stats = p.stats?.bind(p);
    if (stats) {
      metrics.watchCaches(() => {
        const s = stats();
        return {
          vision_embeddings: s.cache,
          segmenter_embeddings: s.segmenterCache,
          text_features: s.textCache,
        };
      });
    }
  });
  const limits = config.limits;

  const app = Fastify({
    logger: config.logLevel === "silent" ? false : { level: config.logLevel },
    bodyLimit: limits.maxBodyBytes,
    // Base64 images make JSON bodies large; parsing is still linear. Keep prototype poisoning out.
    onProtoPoisoning: "error",
    onConstructorPoisoning: "error",
    // No type coercion: a number sent where text belongs is an error, and coercion inside anyOf
    // rewrites data (it unwraps one-element arrays). Multipart text fields are converted explicitly.
    ajv: { customOptions: { coerceTypes: false }, plugins: [ajvBinaryFilePlugin] },
    return503OnClosing: true,
    // Slow clients (slow-loris): the whole request must arrive within receiveTimeoutMs (Node answers
    // 408 and closes the connection). A socket silent for longer than any request may last is dropped;
    // it must not be shorter, as a non-streamed answer keeps the socket silent while it is generated.
    requestTimeout: limits.receiveTimeoutMs,
    connectionTimeout: limits.requestTimeoutMs + limits.receiveTimeoutMs + 10_000,
  });
  app.server.headersTimeout = limits.receiveTimeoutMs;
  // Node checks the two timeouts above on an interval (30 s by default), read when listening starts.
  (app.server as { connectionsCheckingInterval?: number }).connectionsCheckingInterval = Math.min(
    1000,
    Math.max(50, Math.floor(limits.receiveTimeoutMs / 4)),
  );

  installErrorHandlers(app);
  // Fastify parses text/plain by default; no route takes it, so it should be a 415 like any other type.
  app.removeContentTypeParser("text/plain");
  // JSON must be UTF-8 (RFC 8259): invalid bytes are refused instead of silently becoming U+FFFD.
  const parseJson = app.getDefaultJsonParser("error", "error");
  app.removeContentTypeParser("application/json");
  app.addContentTypeParser("application/json", { parseAs: "buffer" }, (request, body, done) => {
    const bytes = body as Buffer;
    if (!isUtf8(bytes)) {
      done(new RegionVqaError("invalid_request", "The JSON body is not valid UTF-8."), undefined);
      return;
    }
    parseJson(request, bytes.toString("utf8"), done);
  });
  for (const schema of sharedSchemas) app.addSchema(schema);

  const scheduler = new RequestScheduler({
    maxConcurrent: Math.min(limits.maxConcurrentRequests, limits.maxConversations),
    maxQueue: limits.maxQueue,
    timeoutMs: limits.requestTimeoutMs,
    onDepth: (active, waiting) => {
      metrics.setQueueDepth("pipeline_requests", active + waiting);
      metrics.setQueueDepth("pipeline_waiting", waiting);
    },
    onRejected: (reason) => metrics.rejected.inc({ reason }),
  });
  schedulers.set(app, scheduler);
  metrics.setQueueDepth("pipeline_requests", 0);
  metrics.setQueueDepth("pipeline_waiting", 0);

  if (options.sharedState) {
    const shared = options.sharedState;
    metrics.watchSharedState(() => shared.status());
  }
  // The replica's name: configured, else the address it listens on (known once listening).
  let replicaName = config.replicaName;
  const replica = (): string => {
    if (replicaName) return replicaName;
    const address = app.server.address() as AddressInfo | null;
    if (!address) return "unknown";
    const wildcard = config.host === "0.0.0.0" || config.host === "::" || config.host === "";
    replicaName = `${wildcard ? os.hostname() : config.host}:${address.port}`;
    return replicaName;
  };

  // Request counts and latencies per route, measured until the socket response ends (streams too).
  app.addHook("onRequest", async (request, reply) => {
    reply.header(REPLICA_HEADER, replica());
    const started = process.hrtime.bigint();
    metrics.inFlight.inc();
    reply.raw.once("close", () => {
      metrics.inFlight.dec();
      const route = request.routeOptions.url ?? "unmatched";
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      metrics.httpRequests.inc({ route, method: request.method, status: String(reply.raw.statusCode) });
      metrics.httpDuration.observe({ route, method: request.method }, seconds);
    });
  });

  if (config.corsOrigins.length > 0) {
    await app.register(fastifyCors, {
      origin: config.corsOrigins.includes("*") ? true : config.corsOrigins,
      // DELETE ends a conversation (/v1/regions/conversations/{id}).
      methods: ["GET", "POST", "DELETE", "OPTIONS"],
      allowedHeaders: ["authorization", "content-type", "x-conversation-id"],
      exposedHeaders: ["x-conversation-id", REPLICA_HEADER],
    });
  }

  await app.register(fastifyMultipart, {
    attachFieldsToBody: "keyValues",
    limits: {
      fileSize: limits.maxBodyBytes,
      files: limits.maxRegions + 1,
      fields: 64,
      parts: limits.maxRegions + 65,
      fieldSize: limits.maxBodyBytes,
    },
  });

  await app.register(fastifySwagger, {
    openapi: {
      openapi: "3.1.0",
      info: {
        title: "region-vqa",
        description:
          "Ask questions about a region of an image (Alpha-CLIP + LLaVA-1.5). Errors are always " +
          '`{"error": {"code", "message"}}`. When the server has an API key, send `Authorization: Bearer <key>` on /v1.',
        version: "0.1.0",
      },
      components: {
        securitySchemes: { bearer: { type: "http", scheme: "bearer" } },
      },
      security: config.apiKey ? [{ bearer: [] }] : [],
      tags: [
        { name: "regions", description: "Native region captioning and question answering" },
        { name: "openai", description: "OpenAI-compatible chat completions, embeddings and models" },
        { name: "ops", description: "Health, readiness and metrics" },
      ],
    },
  });
  await app.register(fastifySwaggerUi, { routePrefix: "/docs" });

  await app.register(opsRoutes, { pipeline, metrics, sharedState: options.sharedState });
  await app.register(regionsRoutes, { pipeline, config, metrics, scheduler });
  await app.register(segmentRoutes, { pipeline, config, metrics, scheduler });
  await app.register(classifyRoutes, { pipeline, config, metrics, scheduler });
  await app.register(conversationRoutes, { pipeline, config, metrics, scheduler });
  await app.register(openAiRoutes, { pipeline, config, metrics, scheduler });
  await app.register(embeddingsRoutes, { pipeline, config, metrics, scheduler });
  await app.register(uiRoutes, { root: options.uiRoot ?? defaultUiRoot });

  if (options.disposePipelineOnClose ?? true) {
    app.addHook("onClose", async () => {
      const p = await pipeline.settled();
      await p?.dispose();
    });
  }
  return app;
}

/**
 * The pipeline requests a server holds: served, waiting, and leases not yet released (tests check
 * that a burst leaves none behind).
 */
export function pipelineRequests(app: FastifyInstance): { active: number; waiting: number; live: number } {
  const scheduler = schedulers.get(app);
  if (!scheduler) throw new RegionVqaError("invalid_request", "not a server made by buildServer");
  return { ...scheduler.stats, live: scheduler.liveLeases };
}

/**
 * Stops a server built by `buildServer` gracefully: it stops accepting connections and new pipeline
 * requests (503), lets requests in flight finish for up to `graceMs`, then aborts what is left (their
 * generations stop at the next token) and closes every connection. Resolves when the server is closed
 * (the pipeline disposed when the server owns it); `forced` says whether the grace period ran out.
 */
export async function closeGracefully(app: FastifyInstance, graceMs: number): Promise<{ forced: boolean }> {
  const scheduler = schedulers.get(app);
  scheduler?.drain();
  let forced = false;
  const closing = app.close();
  // Keep-alive connections whose response ended after close() began would otherwise stay open.
  const idleSweep = setInterval(() => app.server.closeIdleConnections(), 100);
  const deadline = setTimeout(() => {
    forced = true;
    scheduler?.abortAll(new RegionVqaError("aborted", "The server is shutting down."));
    // Give the aborted generations a moment to write their last event, then cut every connection.
    setTimeout(() => app.server.closeAllConnections(), 500).unref();
  }, graceMs);
  try {
    await closing;
  } finally {
    clearInterval(idleSweep);
    clearTimeout(deadline);
  }
  return { forced };
}
