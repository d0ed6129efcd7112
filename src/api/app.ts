/**
 * The Fastify application: route groups as encapsulated plugins over one `RegionVqaPipeline`,
 * an OpenAPI document (/docs/json) with a docs page (/docs), metrics, and the chat UI at `/`.
 */
import path from "node:path";
import { fileURLToPath } from "node:url";
import fastifyCors from "@fastify/cors";
import fastifyMultipart from "@fastify/multipart";
import fastifySwagger from "@fastify/swagger";
import fastifySwaggerUi from "@fastify/swagger-ui";
import Fastify, { type FastifyInstance } from "fastify";
import { defaultConfig, type ServerConfig } from "../config.js";
import type { RegionVqaPipeline } from "../pipeline/types.js";
import { installErrorHandlers } from "./errors.js";
import { PipelineHolder } from "./http.js";
import { ServerMetrics } from "./metrics.js";
import openAiRoutes from "./routes/openai.js";
import opsRoutes from "./routes/ops.js";
import regionsRoutes, { conversationRoutes } from "./routes/regions.js";
import uiRoutes from "./routes/ui.js";
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
}

const packageRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
export const defaultUiRoot = path.join(packageRoot, "dist", "ui");

export async function buildServer(options: BuildServerOptions): Promise<FastifyInstance> {
  const config = options.config ?? defaultConfig;
  const metrics = options.metrics ?? new ServerMetrics();
  const pipeline = new PipelineHolder(options.pipeline);
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
  });
  installErrorHandlers(app);
  // Fastify parses text/plain by default; no route takes it, so it should be a 415 like any other type.
  app.removeContentTypeParser("text/plain");
  for (const schema of sharedSchemas) app.addSchema(schema);

  // Request counts and latencies per route, measured until the socket response ends (streams too).
  const pipelineRoutes = new Set(["/v1/regions/caption", "/v1/regions/ask", "/v1/chat/completions"]);
  let pipelineRequests = 0;
  app.addHook("onRequest", async (request, reply) => {
    const started = process.hrtime.bigint();
    metrics.inFlight.inc();
    // Requests waiting for or using the pipeline: the server's queue depth.
    const usesPipeline = pipelineRoutes.has(request.routeOptions.url ?? "");
    if (usesPipeline) metrics.setQueueDepth("pipeline_requests", ++pipelineRequests);
    reply.raw.once("close", () => {
      metrics.inFlight.dec();
      if (usesPipeline) metrics.setQueueDepth("pipeline_requests", --pipelineRequests);
      const route = request.routeOptions.url ?? "unmatched";
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      metrics.httpRequests.inc({ route, method: request.method, status: String(reply.raw.statusCode) });
      metrics.httpDuration.observe({ route, method: request.method }, seconds);
    });
  });

  if (config.corsOrigins.length > 0) {
    await app.register(fastifyCors, {
      origin: config.corsOrigins.includes("*") ? true : config.corsOrigins,
      methods: ["GET", "POST", "OPTIONS"],
      allowedHeaders: ["authorization", "content-type"],
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
        { name: "openai", description: "OpenAI-compatible chat completions" },
        { name: "ops", description: "Health, readiness and metrics" },
      ],
    },
  });
  await app.register(fastifySwaggerUi, { routePrefix: "/docs" });

  await app.register(opsRoutes, { pipeline, metrics });
  await app.register(regionsRoutes, { pipeline, config, metrics });
  await app.register(conversationRoutes, { pipeline, config, metrics });
  await app.register(openAiRoutes, { pipeline, config, metrics });
  await app.register(uiRoutes, { root: options.uiRoot ?? defaultUiRoot });

  if (options.disposePipelineOnClose ?? true) {
    app.addHook("onClose", async () => {
      const p = await pipeline.settled();
      await p?.dispose();
    });
  }
  return app;
}
