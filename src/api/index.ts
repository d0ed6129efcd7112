/** The HTTP server: Fastify app over a RegionVqaPipeline, its metrics registry and error mapping. */
export { buildServer, closeGracefully, defaultUiRoot, type BuildServerOptions } from "./app.js";
export { RequestScheduler, type Lease, type SchedulerOptions } from "./scheduler.js";
export { ServerMetrics, type PipelineMetricsSink } from "./metrics.js";
export { errorBody, toRegionVqaError, type ErrorBody } from "./errors.js";
