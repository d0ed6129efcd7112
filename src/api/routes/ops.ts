/** Liveness, readiness and Prometheus metrics. None of these need the API key. */
import type { FastifyPluginAsync } from "fastify";
import type { PipelineHolder } from "../http.js";
import type { ServerMetrics } from "../metrics.js";
import { errorBody } from "../errors.js";
import { RegionVqaError } from "../../common/errors.js";

export interface OpsRoutesOptions {
  pipeline: PipelineHolder;
  metrics: ServerMetrics;
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
  },
} as const;

const opsRoutes: FastifyPluginAsync<OpsRoutesOptions> = async (app, { pipeline, metrics }) => {
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
        return { status: "ready", model: id, devices };
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
