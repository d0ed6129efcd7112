/** The HTTP server: Fastify app over a RegionVqaPipeline, its metrics registry and error mapping. */
export { buildServer, defaultUiRoot, type BuildServerOptions } from "./app.js";
export { ServerMetrics, type PipelineMetricsSink } from "./metrics.js";
export { errorBody, toRegionVqaError, type ErrorBody } from "./errors.js";
