/**
 * OpenAI-compatible chat completions over one image region. The image comes as an `image_url`
 * content part (a data URL; remote URLs only when allow-listed); the region is the image's alpha
 * channel or the extension field `region`. Each request is self-contained: earlier user/assistant
 * turns are replayed as history after the image, and the conversation is closed afterwards.
 */
import { randomUUID } from "node:crypto";
import type { FastifyPluginAsync } from "fastify";
import type { FinishReason } from "../../pipeline/types.js";
import { answerQuestion, regionsOf, type AnswerFormat, type ModelRouteOptions } from "../answer.js";
import { parseMessages, type ChatMessage } from "../chat-messages.js";
import { errorBody } from "../errors.js";
import { bearerAuth, generationOptions, usageOf, type GenerationFields } from "../http.js";
import { bytesFromField, parseRegion } from "../input.js";
import { fetchRemoteImage } from "../remote-image.js";
import { errorResponses, generationFields, regionDescription } from "../schemas.js";
import { embeddingModelId } from "./embeddings.js";

interface ChatRequest extends GenerationFields {
  model?: string;
  messages: ChatMessage[];
  stream?: boolean;
  stream_options?: { include_usage?: boolean };
  n?: number;
  region?: unknown;
}

/** OpenAI finish reasons: an aborted answer is reported as "stop" (the client left anyway). */
const finishReasonOf = (r: FinishReason): "stop" | "length" => (r === "length" ? "length" : "stop");

const contentPartSchema = {
  type: "object",
  properties: {
    type: { type: "string", enum: ["text", "image_url"] },
    text: { type: "string" },
    image_url: {
      anyOf: [
        {
          type: "object",
          properties: { url: { type: "string" }, detail: { type: "string" } },
          required: ["url"],
        },
        { type: "string" },
      ],
    },
  },
  required: ["type"],
};

/** chat.completion objects and chat.completion.chunk events for one request. */
function openAiFormat(model: string, includeUsage: boolean): AnswerFormat<unknown> {
  const id = `chatcmpl-${randomUUID().replaceAll("-", "")}`;
  const created = Math.floor(Date.now() / 1000);
  const chunk = (delta: Record<string, unknown>, finish: string | null) => ({
    id,
    object: "chat.completion.chunk",
    created,
    model,
    choices: [{ index: 0, delta, finish_reason: finish, logprobs: null }],
  });
  return {
    json: ({ result, text }) => ({
      id,
      object: "chat.completion",
      created,
      model,
      choices: [
        {
          index: 0,
          message: { role: "assistant", content: text.trim() },
          finish_reason: finishReasonOf(result.finishReason),
          logprobs: null,
        },
      ],
      usage: usageOf(result),
    }),
    streamStart: (events) => events.send(chunk({ role: "assistant", content: "" }, null)),
    streamDelta: (events, piece) => events.send(chunk({ content: piece }, null)),
    streamDone: (events, { result }) => {
      events.send(chunk({}, finishReasonOf(result.finishReason)));
      if (includeUsage) {
        events.send({
          id,
          object: "chat.completion.chunk",
          created,
          model,
          choices: [],
          usage: usageOf(result),
        });
      }
    },
    streamError: (events, err) => events.send(errorBody(err)),
    streamEnd: (events) => events.send("[DONE]"),
  };
}

const openAiRoutes: FastifyPluginAsync<ModelRouteOptions> = async (app, route) => {
  const { pipeline, config } = route;
  app.addHook("onRequest", bearerAuth(config.apiKey));

  app.get(
    "/v1/models",
    {
      schema: {
        tags: ["openai"],
        summary: "The served model (OpenAI-compatible list)",
        response: {
          200: {
            type: "object",
            properties: {
              object: { type: "string" },
              data: {
                type: "array",
                items: {
                  type: "object",
                  properties: {
                    id: { type: "string" },
                    object: { type: "string" },
                    created: { type: "integer" },
                    owned_by: { type: "string" },
                  },
                },
              },
            },
          },
          ...errorResponses,
        },
      },
    },
    async () => {
      const p = pipeline.get();
      return {
        object: "list",
        data: [
          { id: p.models.id, object: "model", created: 0, owned_by: "region-vqa" },
          // The embeddings model (POST /v1/embeddings), when a CLIP text tower is loaded.
          ...(p.models.text && p.embedTexts
            ? [{ id: embeddingModelId(p), object: "model", created: 0, owned_by: "region-vqa" }]
            : []),
        ],
      };
    },
  );

  app.post(
    "/v1/chat/completions",
    {
      schema: {
        tags: ["openai"],
        summary: "OpenAI-compatible chat completion about an image region",
        description:
          "Send one image as an `image_url` content part (a data URL) in a user message. The region is " +
          "the image's alpha channel, or the extension field `region`. Earlier user/assistant messages " +
          "are replayed as the conversation's history. `stream: true` gives OpenAI chunks and `data: [DONE]`.",
        body: {
          type: "object",
          required: ["messages"],
          properties: {
            model: {
              type: "string",
              description:
                "Any name: the server answers with its one loaded model and reports that model's id.",
            },
            messages: {
              type: "array",
              minItems: 1,
              items: {
                type: "object",
                required: ["role"],
                properties: {
                  role: { type: "string" },
                  content: {
                    anyOf: [
                      { type: "string" },
                      { type: "array", items: contentPartSchema },
                      { type: "null" },
                    ],
                  },
                },
              },
            },
            region: { description: `Extension: ${regionDescription}` },
            stream: { type: "boolean", default: false },
            stream_options: { type: "object", properties: { include_usage: { type: "boolean" } } },
            n: { type: "integer", minimum: 1, maximum: 1 },
            max_completion_tokens: { type: "integer", minimum: 1 },
            ...generationFields,
          },
        },
        response: {
          200: {
            description: "A chat.completion object, or a text/event-stream of chat.completion.chunk objects.",
            type: "object",
            properties: {
              id: { type: "string" },
              object: { type: "string" },
              created: { type: "integer" },
              model: { type: "string" },
              choices: {
                type: "array",
                items: {
                  type: "object",
                  properties: {
                    index: { type: "integer" },
                    message: {
                      type: "object",
                      properties: { role: { type: "string" }, content: { type: "string" } },
                    },
                    finish_reason: { type: "string" },
                    logprobs: { type: "null" },
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
      const body = request.body as ChatRequest;
      const p = pipeline.get();
      // `model` is not checked: many clients hard-code a name. The answer names the model really used.
      const chat = parseMessages(body.messages, config.limits);
      const specs =
        body.region === undefined || body.region === null ? [] : [parseRegion(body.region, config.limits)];
      // Each request is self-contained: its conversation is disposed of after the answer.
      return answerQuestion(route, request, reply, {
        keep: false,
        question: chat.question,
        generation: generationOptions(body, config.limits),
        stream: body.stream === true,
        format: openAiFormat(p.models.id, body.stream_options?.include_usage === true),
        conversation: async (lease) => {
          const image = /^https?:\/\//i.test(chat.imageUrl)
            ? await fetchRemoteImage(chat.imageUrl, config.remoteImages, lease.signal)
            : bytesFromField(chat.imageUrl, "image", {
                missing: "image_missing",
                undecodable: "image_undecodable",
              });
          const { regions, decoded } = await regionsOf(route, lease, image, specs);
          const conversation = await p.openConversation(image, regions[0], {
            history: chat.history,
            systemPrompt: chat.systemPrompt,
            signal: lease.signal,
            decoded,
          });
          return { conversation, opened: true };
        },
      });
    },
  );
};

export default openAiRoutes;
