/** The HTTP server: Fastify app over a RegionVqaPipeline, its metrics registry and error mapping. */
export {
  buildServer,
  closeGracefully,
  defaultUiRoot,
  pipelineRequests,
  REPLICA_HEADER,
  type BuildServerOptions,
  type SharedStateHealth,
} from "./app.js";
export { CONVERSATION_ID_HEADER } from "./routes/regions.js";
export { RequestScheduler, type Lease, type SchedulerOptions } from "./scheduler.js";
export { CACHE_METRIC_NAMES, ServerMetrics, type PipelineMetricsSink } from "./metrics.js";
export { errorBody, toRegionVqaError, type ErrorBody } from "./errors.js";
