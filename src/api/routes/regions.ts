/**
 * The native REST API: region captions and region question answering (multi-turn, streamed or not).
 * Both take JSON (images as base64 / data URLs) or multipart/form-data (image and mask files).
 */
import type { FastifyPluginAsync, FastifyRequest } from "fastify";
import { RegionVqaError } from "../../common/errors.js";
import { checkQuestion } from "../../common/limits.js";
import type { RegionVqaPipeline, ResumedConversation } from "../../pipeline/types.js";
import {
  answerQuestion,
  regionsOf,
  withLease,
  type AnswerFormat,
  type ModelRouteOptions,
} from "../answer.js";
import { errorBody } from "../errors.js";
import { bearerAuth, generationOptions, usageOf, type GenerationFields } from "../http.js";
import { bytesFromField, regionSpecsFromBody, type RegionSpec } from "../input.js";
import { errorResponses, generationFields, jsonRegionFields, multipartRegionFields } from "../schemas.js";

type Body = Record<string, unknown> & GenerationFields;

const typedFormFields: Record<string, "number" | "boolean"> = {
  max_tokens: "number",
  temperature: "number",
  top_p: "number",
  top_k: "number",
  seed: "number",
  stream: "boolean",
};

/** Multipart `options` (a JSON object) is merged into the form before validation. */
export async function mergeMultipartOptions(request: FastifyRequest): Promise<void> {
  if (!request.isMultipart()) return;
  const body = (request.body ?? {}) as Record<string, unknown>;
  let options = body.options;
  if (options instanceof Uint8Array) options = Buffer.from(options).toString("utf8");
  if (typeof options === "string" && options.trim() !== "") {
    let parsed: unknown;
    try {
      parsed = JSON.parse(options);
    } catch {
      throw new RegionVqaError("invalid_request", "The options field is not valid JSON.");
    }
    if (!parsed || typeof parsed !== "object" || Array.isArray(parsed)) {
      throw new RegionVqaError("invalid_request", "The options field must be a JSON object.");
    }
    for (const [k, v] of Object.entries(parsed)) if (body[k] === undefined) body[k] = v;
  }
  delete body.options;
  // Form fields are text: turn the typed ones into numbers and booleans before validation.
  for (const [field, kind] of Object.entries(typedFormFields)) {
    const value = body[field];
    if (typeof value !== "string") continue;
    const text = value.trim();
    if (kind === "boolean") {
      if (text === "true" || text === "1") body[field] = true;
      else if (text === "false" || text === "0" || text === "") body[field] = false;
    } else if (text !== "" && Number.isFinite(Number(text))) {
      body[field] = Number(text);
    }
  }
  request.body = body;
}

function bodySchemas(fields: Record<string, unknown>, required: string[] = []) {
  const jsonFields = { ...jsonRegionFields, ...generationFields, ...fields };
  const multipartFields = { ...jsonRegionFields, ...multipartRegionFields, ...generationFields, ...fields };
  // Cloned: compiling the file keyword rewrites its schema object, which must not leak to other routes.
  return structuredClone({
    content: {
      "application/json": { schema: { type: "object", properties: jsonFields, required } },
      "multipart/form-data": { schema: { type: "object", properties: multipartFields, required } },
    },
  });
}

/** The native answer: JSON, or `conversation`, `delta`..., `done` | `error` events. */
function nativeFormat(model: string): AnswerFormat<unknown> {
  const json: AnswerFormat<unknown>["json"] = ({ conversation, result, text }) => ({
    conversation_id: conversation.id,
    model,
    answer: text.trim(),
    finish_reason: result.finishReason,
    turns: conversation.turns.length,
    usage: usageOf(result),
  });
  return {
    json,
    streamStart: (events, conversation) =>
      events.send({ conversation_id: conversation.id, model }, "conversation"),
    streamDelta: (events, piece) => events.send({ text: piece }, "delta"),
    streamDone: (events, answer) => events.send(json(answer), "done"),
    streamError: (events, err) => events.send(errorBody(err), "error"),
  };
}

/**
 * The conversation id as a header, on answers and (optionally) on requests: load balancers route on
 * headers without reading bodies (deploy/haproxy.cfg learns it from the first answer).
 */
export const CONVERSATION_ID_HEADER = "x-conversation-id";

function conversationIdHeader(value: string | string[] | undefined): string | undefined {
  const text = Array.isArray(value) ? value[0] : value;
  return text && text.trim() !== "" ? text.trim() : undefined;
}

function notFound(id: string): RegionVqaError {
  return new RegionVqaError(
    "conversation_not_found",
    `No conversation "${id}" (it may have expired); start again with an image.`,
  );
}

/** This process's conversation, else (with shared state) one rebuilt from its transcript. */
async function followUp(p: RegionVqaPipeline, id: string, signal: AbortSignal): Promise<ResumedConversation> {
  if (p.resumeConversation) {
    const resumed = await p.resumeConversation(id, { signal });
    if (!resumed) throw notFound(id);
    return resumed;
  }
  const local = p.getConversation(id);
  if (!local) throw notFound(id);
  return { conversation: local, rebuilt: false };
}

const regionsRoutes: FastifyPluginAsync<ModelRouteOptions> = async (app, route) => {
  const { pipeline, config, metrics } = route;
  const limits = config.limits;
  app.addHook("onRequest", bearerAuth(config.apiKey));

  app.post(
    "/v1/regions/caption",
    {
      preValidation: mergeMultipartOptions,
      schema: {
        tags: ["regions"],
        summary: "Caption one or more regions of an image",
        description:
          "One caption per region, in the order given (`regions`, then `region`, then the `mask`, `box`, " +
          "`polygon`, `rle` fields). All regions of one image are encoded in one batch.",
        body: bodySchemas({
          regions: { type: "array", description: "A list of regions (see `region`).", items: {} },
          detail: {
            type: "string",
            enum: ["short", "long"],
            default: "short",
            description: "Caption length.",
          },
        }),
        response: {
          200: {
            type: "object",
            properties: {
              model: { type: "string" },
              captions: {
                type: "array",
                items: {
                  type: "object",
                  properties: {
                    index: { type: "integer" },
                    caption: { type: "string" },
                    finish_reason: { type: "string", enum: ["stop", "length", "abort"] },
                    usage: { $ref: "Usage#" },
                  },
                },
              },
              usage: { $ref: "Usage#" },
            },
          },
          ...errorResponses,
        },
      },
    },
    async (request, reply) => {
      const body = request.body as Body;
      const p = pipeline.get();
      const image = bytesFromField(body.image, "image", {
        missing: "image_missing",
        undecodable: "image_undecodable",
      });
      const specs = regionSpecsFromBody(body, limits);
      const detail = (body.detail as "short" | "long" | undefined) ?? "short";
      const generation = generationOptions(body, limits);
      // Cheap checks first; decoding and the models wait for a turn.
      return withLease(route, request, reply, async (lease) => {
        const { regions, decoded } = await regionsOf(route, lease, image, specs);
        const results = await p.captionRegions(image, regions, {
          ...generation,
          signal: lease.signal,
          detail,
          decoded,
        });
        let prompt = 0;
        let completion = 0;
        for (const r of results) {
          prompt += r.promptTokens;
          completion += r.completionTokens;
          metrics.recordAnswer(r);
        }
        // A deadline or a vanished client cut the captions short: no partial answer as a success.
        lease.throwIfAborted();
        return {
          model: p.models.id,
          captions: results.map((r, index) => ({
            index,
            caption: r.text.trim(),
            finish_reason: r.finishReason,
            usage: usageOf(r),
          })),
          usage: usageOf({ promptTokens: prompt, completionTokens: completion }),
        };
      });
    },
  );

  app.post(
    "/v1/regions/ask",
    {
      preValidation: mergeMultipartOptions,
      schema: {
        tags: ["regions"],
        summary: "Ask a question about a region; follow-ups continue the conversation",
        description:
          "First turn: an image, one region and a question; the answer carries a `conversation_id`. " +
          "Follow-up: the `conversation_id` and a question, no image. With `stream: true` the answer " +
          "arrives as server-sent events: `conversation` {conversation_id, model}, then `delta` {text} " +
          "pieces, then `done` {conversation_id, answer, finish_reason, usage}, or `error` {error}.",
        body: bodySchemas(
          {
            question: { type: "string", description: "The question (or follow-up)." },
            conversation_id: { type: "string", description: "Continue this conversation (send no image)." },
            stream: {
              type: "boolean",
              default: false,
              description: "Stream the answer as server-sent events.",
            },
            system_prompt: {
              type: "string",
              description: "Replaces the default system prompt (first turn only).",
            },
          },
          ["question"],
        ),
        response: {
          200: {
            description: "The answer (JSON), or a text/event-stream when `stream` is true.",
            type: "object",
            properties: {
              conversation_id: { type: "string" },
              model: { type: "string" },
              answer: { type: "string" },
              finish_reason: { type: "string", enum: ["stop", "length", "abort"] },
              turns: { type: "integer", description: "Finished turns in the conversation so far." },
              usage: { $ref: "Usage#" },
            },
          },
          ...errorResponses,
        },
      },
    },
    async (request, reply) => {
      const body = request.body as Body;
      const p = pipeline.get();
      const question = checkQuestion(body.question, limits.maxQuestionChars);
      const generation = generationOptions(body, limits);

      // The id may come in the body or, for load balancers that route on it, the X-Conversation-Id header.
      const headerId = conversationIdHeader(request.headers[CONVERSATION_ID_HEADER]);
      const bodyId =
        typeof body.conversation_id === "string" && body.conversation_id !== ""
          ? body.conversation_id
          : undefined;
      if (bodyId && headerId && bodyId !== headerId) {
        throw new RegionVqaError(
          "invalid_request",
          `conversation_id "${bodyId}" and the X-Conversation-Id header "${headerId}" differ.`,
        );
      }
      const hasImageOrRegion = ["image", "mask", "region", "regions", "box", "polygon", "rle", "points"].some(
        (k) => body[k] !== undefined && body[k] !== "",
      );
      // A header id with an image starts a conversation under the client's id; without one it is a follow-up.
      const followUpId = bodyId ?? (hasImageOrRegion ? undefined : headerId);
      const newId = followUpId === undefined ? headerId : undefined;
      let image: Uint8Array | undefined;
      let specs: RegionSpec[] = [];
      if (followUpId !== undefined) {
        if (hasImageOrRegion) {
          throw new RegionVqaError(
            "invalid_request",
            "A follow-up continues its conversation's image and region: send conversation_id and question only.",
          );
        }
        // Known neither here nor (with shared state) elsewhere: refused before queueing for a turn.
        if (!p.getConversation(followUpId) && !p.resumeConversation) throw notFound(followUpId);
      } else {
        image = bytesFromField(body.image, "image", {
          missing: "image_missing",
          undecodable: "image_undecodable",
        });
        specs = regionSpecsFromBody(body, limits);
        if (specs.length > 1) {
          throw new RegionVqaError(
            "invalid_request",
            `A question is about one region; the request states ${specs.length}.`,
          );
        }
      }
      const systemPrompt =
        typeof body.system_prompt === "string" && body.system_prompt !== "" ? body.system_prompt : undefined;

      return answerQuestion(route, request, reply, {
        // The conversation stays open for follow-ups (until DELETE, eviction or its idle timeout).
        keep: true,
        question,
        generation,
        stream: body.stream === true,
        format: nativeFormat(p.models.id),
        conversation: async (lease) => {
          if (followUpId !== undefined) {
            const found = await followUp(p, followUpId, lease.signal);
            metrics.conversationTurns.inc({ kv: found.rebuilt ? "rebuilt" : "reused" });
            reply.header(CONVERSATION_ID_HEADER, found.conversation.id);
            return { conversation: found.conversation, opened: false };
          }
          const { regions, decoded } = await regionsOf(route, lease, image!, specs);
          const conversation = await p.openConversation(image!, regions[0], {
            systemPrompt,
            signal: lease.signal,
            decoded,
            ...(newId !== undefined ? { id: newId } : {}),
          });
          metrics.conversationTurns.inc({ kv: "new" });
          reply.header(CONVERSATION_ID_HEADER, conversation.id);
          return { conversation, opened: true };
        },
      });
    },
  );
};

const conversationRoutes: FastifyPluginAsync<ModelRouteOptions> = async (app, { pipeline, config }) => {
  app.addHook("onRequest", bearerAuth(config.apiKey));
  app.delete(
    "/v1/regions/conversations/:id",
    {
      schema: {
        tags: ["regions"],
        summary: "End a conversation and free its LLM slot",
        params: { type: "object", properties: { id: { type: "string" } }, required: ["id"] },
        response: {
          200: {
            type: "object",
            properties: { conversation_id: { type: "string" }, closed: { type: "boolean" } },
          },
          ...errorResponses,
        },
      },
    },
    async (request) => {
      const { id } = request.params as { id: string };
      const p = pipeline.get();
      // With shared state the transcript goes too, so no replica continues it afterwards.
      const closed = p.closeConversation
        ? await p.closeConversation(id)
        : await p
            .getConversation(id)
            ?.dispose()
            .then(() => true);
      if (!closed)
        throw new RegionVqaError("conversation_not_found", `No conversation "${id}" (it may have expired).`);
      return { conversation_id: id, closed: true };
    },
  );
};

export { conversationRoutes };
export default regionsRoutes;
