/**
 * The flow every route that runs the models shares: wait for a turn (`withLease`), turn the image and
 * regions into checked masks (`regionsOf`), and for questions (`answerQuestion`): get a conversation,
 * ask, and answer as one JSON body or as server-sent events. Routes only say what their JSON and
 * events look like (`AnswerFormat`).
 */
import type { FastifyReply, FastifyRequest } from "fastify";
import { RegionVqaError } from "../common/errors.js";
import type { ServerConfig } from "../config.js";
import type { AnswerResult, Conversation, GenerationOptions } from "../pipeline/types.js";
import { toRegionVqaError } from "./errors.js";
import { clientAbortSignal, EventStream, type PipelineHolder } from "./http.js";
import { resolveRegions, type RegionSpec, type ResolvedImage, type SegmentFn } from "./input.js";
import type { ServerMetrics } from "./metrics.js";
import type { Lease, RequestScheduler } from "./scheduler.js";

/** What the model-running route groups are registered with. */
export interface ModelRouteOptions {
  pipeline: PipelineHolder;
  config: ServerConfig;
  metrics: ServerMetrics;
  scheduler: RequestScheduler;
}

/**
 * Runs `work` once the scheduler grants a turn. The lease's signal fires when the client goes away,
 * the deadline passes or the server stops; a failure is reported as that reason when it fired.
 */
export async function withLease<T>(
  { scheduler }: ModelRouteOptions,
  request: FastifyRequest,
  reply: FastifyReply,
  work: (lease: Lease) => Promise<T>,
): Promise<T> {
  const lease = await scheduler.admit(clientAbortSignal(request, reply));
  try {
    return await work(lease);
  } catch (err) {
    throw lease.reasonFor(err);
  } finally {
    lease.release();
  }
}

/** Decodes the image and checks every region against it (timed as the "decode" stage). */
export async function regionsOf(
  { config, metrics, pipeline }: ModelRouteOptions,
  lease: Lease,
  image: Uint8Array,
  specs: RegionSpec[],
): Promise<ResolvedImage> {
  const p = pipeline.get();
  // The segmenter's cache key is the hash of the encoded bytes, made while decoding.
  const segment: SegmentFn | undefined = p.segment
    ? async (decoded, prompt) => (await p.segment!(decoded, prompt, { imageKey: decoded.sha256 })).mask
    : undefined;
  const resolved = await resolveRegions(image, specs, config.limits, segment);
  metrics.observeStage("decode", resolved.decodeSeconds);
  lease.throwIfAborted();
  return resolved;
}

export interface FinishedAnswer {
  conversation: Conversation;
  result: AnswerResult;
  /** The whole answer text, untrimmed. */
  text: string;
}

/** How one route writes an answer: as a JSON body, or as events (the stream is ended by the caller). */
export interface AnswerFormat<J> {
  json(answer: FinishedAnswer): J;
  streamStart(events: EventStream, conversation: Conversation): void;
  streamDelta(events: EventStream, piece: string): void;
  streamDone(events: EventStream, answer: FinishedAnswer): void;
  /** Headers are gone once streaming began: a failure travels as an event. */
  streamError(events: EventStream, err: RegionVqaError): void;
  /** Written last, after done or error (e.g. OpenAI's `[DONE]`). */
  streamEnd?(events: EventStream): void;
}

export interface QuestionSpec<J> {
  /** Finds or opens the conversation once a turn is granted; `opened`: this request made it. */
  conversation(lease: Lease): Promise<{ conversation: Conversation; opened: boolean }>;
  /** Keep an opened conversation after a successful answer (follow-ups) or dispose of it (one-shot). */
  keep: boolean;
  question: string;
  generation: GenerationOptions;
  stream: boolean;
  format: AnswerFormat<J>;
}

/**
 * Lease, conversation, question, answer. The first piece of the answer is awaited before anything is
 * written, so early failures still get a proper status code; a conversation this request opened is
 * disposed of when it fails (and always, unless `keep`).
 */
export function answerQuestion<J>(
  route: ModelRouteOptions,
  request: FastifyRequest,
  reply: FastifyReply,
  spec: QuestionSpec<J>,
): Promise<J | FastifyReply> {
  return withLease(route, request, reply, async (lease) => {
    const { conversation, opened } = await spec.conversation(lease);
    let keep = false;
    try {
      lease.throwIfAborted();
      const answer = conversation.ask(spec.question, { ...spec.generation, signal: lease.signal });
      const iterator = answer[Symbol.asyncIterator]();
      const first = await iterator.next();
      const finish = async (text: string): Promise<FinishedAnswer> => {
        const result = await answer.result;
        route.metrics.recordAnswer(result);
        // Cut short by the deadline (or a vanished client): an error, not a short answer.
        lease.throwIfAborted();
        return { conversation, result, text };
      };
      if (!spec.stream) {
        let text = "";
        for (let step = first; !step.done; step = await iterator.next()) text += step.value;
        const body = spec.format.json(await finish(text));
        keep = spec.keep;
        return body;
      }
      // From here the conversation has answered (or reports its failure in the stream).
      keep = spec.keep;
      const events = new EventStream(reply);
      spec.format.streamStart(events, conversation);
      try {
        let text = "";
        for (let step = first; !step.done; step = await iterator.next()) {
          text += step.value;
          spec.format.streamDelta(events, step.value);
        }
        spec.format.streamDone(events, await finish(text));
      } catch (err) {
        spec.format.streamError(events, toRegionVqaError(err));
      }
      spec.format.streamEnd?.(events);
      events.end();
      return reply;
    } finally {
      if (opened && !keep) await conversation.dispose().catch(() => undefined);
    }
  });
}
