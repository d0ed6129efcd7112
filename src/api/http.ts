/**
 * Small helpers the route groups share: pipeline access, generation options from request fields,
 * client-disconnect aborts, bearer-key checks and a server-sent-events writer.
 */
import { timingSafeEqual, createHash } from "node:crypto";
import type { FastifyReply, FastifyRequest, onRequestHookHandler } from "fastify";
import { RegionVqaError } from "../common/errors.js";
import type { ServerLimits } from "../config.js";
import type { AnswerResult, GenerationOptions, RegionVqaPipeline } from "../pipeline/types.js";

/** The pipeline, or a promise of it while models load (then /readyz is 503 and /v1 answers 503). */
export class PipelineHolder {
  private pipeline?: RegionVqaPipeline;
  private failure?: Error;
  private readonly loading: Promise<RegionVqaPipeline | undefined>;

  constructor(source: RegionVqaPipeline | Promise<RegionVqaPipeline>) {
    if (source instanceof Promise) {
      this.loading = source.then(
        (p) => (this.pipeline = p),
        (err: Error) => {
          this.failure = err;
          return undefined;
        },
      );
    } else {
      this.pipeline = source;
      this.loading = Promise.resolve(source);
    }
  }

  get ready(): boolean {
    return this.pipeline !== undefined;
  }

  get loadError(): Error | undefined {
    return this.failure;
  }

  get(): RegionVqaPipeline {
    if (this.pipeline) return this.pipeline;
    if (this.failure) {
      throw new RegionVqaError("model_invalid", `The models failed to load: ${this.failure.message}`);
    }
    throw new RegionVqaError("overloaded", "The models are still loading; try again in a moment.", {
      retryAfterSeconds: 5,
    });
  }

  /** The pipeline once loaded (undefined if loading failed). */
  settled(): Promise<RegionVqaPipeline | undefined> {
    return this.loading;
  }
}

export interface GenerationFields {
  max_tokens?: number;
  max_completion_tokens?: number;
  temperature?: number;
  top_p?: number;
  top_k?: number;
  seed?: number;
  stop?: string | string[];
}

/** Request fields -> pipeline options; `max_tokens` above the server's limit is refused, not clipped. */
export function generationOptions(
  fields: GenerationFields,
  limits: ServerLimits,
  signal?: AbortSignal,
): GenerationOptions {
  const requested = fields.max_completion_tokens ?? fields.max_tokens;
  if (requested !== undefined && requested > limits.maxTokens) {
    throw new RegionVqaError(
      "invalid_request",
      `max_tokens is ${requested}; this server allows at most ${limits.maxTokens}.`,
      { maxTokens: limits.maxTokens },
    );
  }
  const options: GenerationOptions = { maxTokens: requested ?? limits.maxTokens, signal };
  if (fields.temperature !== undefined) options.temperature = fields.temperature;
  if (fields.top_p !== undefined) options.topP = fields.top_p;
  if (fields.top_k !== undefined) options.topK = fields.top_k;
  if (fields.seed !== undefined) options.seed = fields.seed;
  if (fields.stop !== undefined) {
    const stop = (Array.isArray(fields.stop) ? fields.stop : [fields.stop]).filter((s) => s.length > 0);
    if (stop.length > 0) options.stop = stop;
  }
  return options;
}

/** Token counts of an answer as the API reports them (native and OpenAI-compatible alike). */
export function usageOf(r: Pick<AnswerResult, "promptTokens" | "completionTokens">) {
  return {
    prompt_tokens: r.promptTokens,
    completion_tokens: r.completionTokens,
    total_tokens: r.promptTokens + r.completionTokens,
  };
}

/** An AbortSignal that fires when the client goes away before the response is complete. */
export function clientAbortSignal(request: FastifyRequest, reply: FastifyReply): AbortSignal {
  const controller = new AbortController();
  const onClose = () => {
    if (!reply.raw.writableFinished)
      controller.abort(new RegionVqaError("aborted", "The client closed the connection."));
  };
  reply.raw.once("close", onClose);
  request.raw.once("aborted", onClose);
  return controller.signal;
}

function digest(s: string): Buffer {
  return createHash("sha256").update(s).digest();
}

/** Bearer-key check for /v1 routes; a no-op when no key is configured. */
export function bearerAuth(apiKey: string | undefined): onRequestHookHandler {
  const expected = apiKey ? digest(apiKey) : undefined;
  return async (request) => {
    if (!expected) return;
    const header = request.headers.authorization ?? "";
    const match = /^Bearer\s+(.+)$/i.exec(header);
    // Compare digests so that timing reveals nothing about the key's length or prefix.
    if (!match || !timingSafeEqual(digest(match[1].trim()), expected)) {
      throw new RegionVqaError(
        "unauthorized",
        "This server needs an API key: send `Authorization: Bearer <key>`.",
      );
    }
  };
}

/** A text/event-stream response written directly to the socket (Fastify steps aside). */
export class EventStream {
  private closed = false;

  constructor(private readonly reply: FastifyReply) {
    reply.hijack();
    reply.raw.writeHead(200, {
      ...(reply.getHeaders() as Record<string, string>),
      "content-type": "text/event-stream; charset=utf-8",
      "cache-control": "no-cache, no-transform",
      connection: "keep-alive",
      "x-accel-buffering": "no",
    });
    reply.raw.once("close", () => (this.closed = true));
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** One event; `data` is JSON-encoded unless it is already a string. */
  send(data: unknown, event?: string): void {
    if (this.closed) return;
    const text = typeof data === "string" ? data : JSON.stringify(data);
    this.reply.raw.write(`${event ? `event: ${event}\n` : ""}data: ${text}\n\n`);
  }

  end(): void {
    if (this.closed) return;
    this.closed = true;
    this.reply.raw.end();
  }
}
