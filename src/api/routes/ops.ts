/** Liveness, readiness and Prometheus metrics. None of these need the API key. */
import type { FastifyPluginAsync } from "fastify";
import type { SharedStateHealth } from "../app.js";
import type { PipelineHolder } from "../http.js";
import type { ServerMetrics } from "../metrics.js";
import { errorBody } from "../errors.js";
import { RegionVqaError } from "../../common/errors.js";

export interface OpsRoutesOptions {
  pipeline: PipelineHolder;
  metrics: ServerMetrics;
  sharedState?: SharedStateHealth;
}

const statusSchema = {
  type: "object",
  properties: {
    status: { type: "string" },
    model: { type: "string" },
    devices: {
      type: "object",
      description: "Where each stage runs",
      properties: { vision: { type: "string" }, llm: { type: "string" } },
    },
    shared_state: {
      type: "object",
      description:
        "With --redis: `ok`, or `degraded` (Redis unreachable: requests are served from local state; status is then `degraded`, still 200)",
      properties: {
        state: { type: "string", enum: ["ok", "degraded"] },
        error: { type: "string" },
        max_memory_bytes: { type: "integer" },
      },
    },
  },
} as const;

const opsRoutes: FastifyPluginAsync<OpsRoutesOptions> = async (app, { pipeline, metrics, sharedState }) => {
  app.get(
    "/healthz",
    { schema: { tags: ["ops"], summary: "The process is up", response: { 200: statusSchema } } },
    async () => ({ status: "ok" }),
  );

  app.get(
    "/readyz",
    {
      schema: {
        tags: ["ops"],
        summary: "The models are loaded and requests can be served",
        response: { 200: statusSchema, 503: { $ref: "ErrorResponse#" } },
      },
    },
    async (_request, reply) => {
      if (pipeline.ready) {
        const { id, devices } = pipeline.get().models;
        if (!sharedState) return { status: "ready", model: id, devices };
        // Degraded is still ready: every request is served, only without the other replicas' state.
        const s = sharedState.status();
        return {
          status: s.state === "ok" ? "ready" : "degraded",
          model: id,
          devices,
          shared_state: {
            state: s.state,
            ...(s.error !== undefined ? { error: s.error } : {}),
            ...(s.maxMemoryBytes !== undefined ? { max_memory_bytes: s.maxMemoryBytes } : {}),
          },
        };
      }
      const err = pipeline.loadError
        ? new RegionVqaError("model_invalid", `The models failed to load: ${pipeline.loadError.message}`)
        : new RegionVqaError("overloaded", "The models are still loading.");
      return reply.code(503).send(errorBody(err));
    },
  );

  app.get(
    "/metrics",
    { schema: { tags: ["ops"], summary: "Prometheus metrics (text exposition format)" } },
    async (_request, reply) => {
      const text = await metrics.registry.metrics();
      return reply.type(metrics.registry.contentType).send(text);
    },
  );
};

export default opsRoutes;
