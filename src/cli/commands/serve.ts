import { Command, Option } from "commander";
import { buildServer, CACHE_METRIC_NAMES, closeGracefully, ServerMetrics } from "../../api/index.js";
import { RegionVqaError } from "../../common/errors.js";
import { environmentVariables, loadConfig, type ServerConfig, type ServerConfigInput } from "../../config.js";
import { createPipeline } from "../../pipeline/index.js";
import { RedisSharedState } from "../../shared-state/index.js";
import {
  addModelOptions,
  configureImaging,
  modelConfigFromFlags,
  type ModelCliOptions,
} from "../model-options.js";
import { resolveModelOptions } from "../../models/index.js";
import { numberFlag } from "../number-flag.js";

interface ServeCliOptions extends ModelCliOptions {
  port?: string;
  host?: string;
  config?: string;
  cors?: string;
  logLevel?: ServerConfig["logLevel"];
  redis?: string;
  replicaName?: string;
}

/** Flags -> a typed config layer (only the flags given; the rest comes from defaults, file and environment). */
function flagsToConfig(opts: ServeCliOptions): ServerConfigInput {
  return {
    host: opts.host,
    port: numberFlag(opts.port, "--port", { min: 0, max: 65535, integer: true }),
    corsOrigins: opts.cors
      ?.split(",")
      .map((s) => s.trim())
      .filter(Boolean),
    logLevel: opts.logLevel,
    replicaName: opts.replicaName,
    sharedState: { url: opts.redis },
    model: modelConfigFromFlags(opts),
  };
}

/** The shared state named by the config (connecting in the background), or undefined without a Redis URL. */
export function sharedStateFromConfig(
  config: ServerConfig,
  metrics: ServerMetrics,
): RedisSharedState | undefined {
  const s = config.sharedState;
  if (!s.url) return undefined;
  const shared = new RedisSharedState({
    url: s.url,
    keyPrefix: s.keyPrefix,
    commandTimeoutMs: s.commandTimeoutMs,
    featureTtlMs: s.featureTtlMs,
    transcriptTtlMs: s.transcriptTtlMs,
    featureDtype: s.featureDtype,
    logger: {
      info: (m) => process.stderr.write(`region-vqa: ${m}\n`),
      warn: (m) => process.stderr.write(`region-vqa: ${m}\n`),
    },
    onCommand: (op, result, seconds) => metrics.recordSharedCommand(op, result, seconds),
  });
  void shared.connect();
  return shared;
}

/** Loads the models named by the config, reporting stage timings and cache lookups into `metrics`. */
export async function pipelineFromConfig(
  config: ServerConfig,
  metrics: ServerMetrics,
  sharedState?: RedisSharedState,
) {
  const models = await resolveModelOptions(config.model);
  const limits = config.limits;
  return createPipeline({
    ...models,
    // The same pool bounds the API's own decoding and mask work.
    imaging: configureImaging(config.model),
    maxRegions: limits.maxRegions,
    maxQuestionChars: limits.maxQuestionChars,
    maxConversations: limits.maxConversations,
    conversationTtlMs: limits.conversationTtlMs,
    decodeLimits: { maxBytes: limits.maxBodyBytes, maxPixels: limits.maxImagePixels },
    onStage: (stage, ms) => metrics.observeStage(stage, ms / 1000),
    onCache: (hit, cache) => metrics.recordCache(CACHE_METRIC_NAMES[cache], hit),
    sharedState,
  });
}

/**
 * `region-vqa serve`: the HTTP API, the OpenAI-compatible endpoint and the chat UI. It listens at
 * once (GET /readyz turns 200 when the models are loaded) and stops cleanly on SIGINT / SIGTERM.
 */
export function register(program: Command): void {
  const envHelp = environmentVariables.map((e) => `  ${e.name.padEnd(36)} ${e.help}`).join("\n");
  const cmd = program
    .command("serve")
    .description("serve the HTTP API (/v1/regions/*, OpenAI-compatible /v1/chat/completions) and the chat UI")
    .option("--port <n>", "port to listen on (default 8080; 0 = any free port)")
    .option("--host <addr>", "address to listen on (default 127.0.0.1)")
    .option("--config <file.json>", "JSON config file (same shape as the config object; see docs/api.md)");
  addModelOptions(cmd)
    .option("--cors <origins>", "comma-separated origins allowed by CORS (off by default)")
    .option(
      "--redis <url>",
      "share region embeddings and conversation transcripts with other replicas through this Redis (redis://host:port[/db])",
    )
    .option(
      "--replica-name <name>",
      "this replica's name in the X-Region-VQA-Replica header (default host:port)",
    )
    .addOption(
      new Option("--log-level <level>", "request log level").choices([
        "fatal",
        "error",
        "warn",
        "info",
        "debug",
        "trace",
        "silent",
      ]),
    )
    .addHelpText(
      "after",
      "\nSettings come from defaults, then --config, then the environment, then flags.\n" +
        "The API key is read from the environment only (flags show up in process lists).\n\n" +
        `Environment variables:\n${envHelp}\n`,
    )
    .action(async (opts: ServeCliOptions) => {
      const config = loadConfig({ file: opts.config, flags: flagsToConfig(opts) });
      const metrics = new ServerMetrics();
      const sharedState = sharedStateFromConfig(config, metrics);
      const loading = pipelineFromConfig(config, metrics, sharedState);
      // Until `loading` settles, an unhandled rejection must not end the process before we report it.
      loading.catch(() => undefined);
      const app = await buildServer({ pipeline: loading, config, metrics, sharedState });
      // Closed after the pipeline (whose last transcript writes still need it).
      if (sharedState) app.addHook("onClose", () => sharedState.close());
      const url = await app.listen({ host: config.host, port: config.port });
      process.stderr.write(`region-vqa: listening on ${url} (UI at ${url}/, API docs at ${url}/docs)\n`);
      const started = Date.now();

      let stopping: Promise<{ forced: boolean }> | undefined;
      let announceStop!: (closing: Promise<{ forced: boolean }>) => void;
      const stopped = new Promise<{ forced: boolean }>((resolve) => (announceStop = resolve));
      const stop = (why: string): void => {
        if (stopping) return;
        process.stderr.write(
          `region-vqa: ${why}, shutting down (in-flight requests have ${config.shutdownGraceMs} ms to finish)\n`,
        );
        stopping = closeGracefully(app, config.shutdownGraceMs);
        announceStop(stopping);
      };
      const onSignal = (signal: NodeJS.Signals): void => {
        // A second signal while draining: stop waiting for the requests in flight.
        if (stopping) {
          process.stderr.write(`region-vqa: ${signal} again, stopping now\n`);
          process.exit(130);
        }
        stop(signal);
      };
      process.on("SIGINT", onSignal);
      process.on("SIGTERM", onSignal);

      // A model that cannot load stops the server: a supervisor sees the exit, and the message names the file.
      let loadFailure: Error | undefined;
      loading.then(
        (p) =>
          process.stderr.write(`region-vqa: model "${p.models.id}" ready in ${Date.now() - started} ms\n`),
        (err: Error) => {
          // The message itself (naming the file) is printed once the server has stopped.
          loadFailure = err;
          stop("the models failed to load");
        },
      );
      const { forced } = await stopped;
      // Native engines may leave handles behind; the server is closed, so nothing is lost by exiting.
      setTimeout(() => process.exit(process.exitCode ?? (loadFailure ? 2 : 0)), 2000).unref();
      process.off("SIGINT", onSignal);
      process.off("SIGTERM", onSignal);
      process.stderr.write(
        forced
          ? "region-vqa: stopped (the grace period ran out; unfinished requests were aborted)\n"
          : "region-vqa: stopped\n",
      );
      if (loadFailure) {
        throw loadFailure instanceof RegionVqaError
          ? loadFailure
          : new RegionVqaError("model_invalid", `the models failed to load: ${loadFailure.message}`);
      }
    });
}
