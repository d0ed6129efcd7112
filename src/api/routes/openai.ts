/**
 * OpenAI-compatible chat completions over one image region. The image comes as an `image_url`
 * content part (a data URL; remote URLs only when allow-listed); the region is the image's alpha
 * channel or the extension field `region`. Each request is self-contained: earlier user/assistant
 * turns are replayed as history after the image, and the conversation is closed afterwards.
 */
import { randomUUID } from "node:crypto";
import type { FastifyPluginAsync, FastifyReply } from "fastify";
import { RegionVqaError } from "../../common/errors.js";
import type { RemoteImageConfig, ServerConfig } from "../../config.js";
import type { Conversation, FinishReason, GenerationOptions, Turn } from "../../pipeline/types.js";
import { errorBody, toRegionVqaError } from "../errors.js";
import {
  bearerAuth,
  checkQuestion,
  clientAbortSignal,
  EventStream,
  generationOptions,
  readAnswerText,
  usageOf,
  type GenerationFields,
  type PipelineHolder,
} from "../http.js";
import { bytesFromField, parseRegion, resolveRegions } from "../input.js";
import type { ServerMetrics } from "../metrics.js";
import type { RequestScheduler } from "../scheduler.js";
import { errorResponses, generationFields, regionDescription } from "../schemas.js";

export interface OpenAiRoutesOptions {
  pipeline: PipelineHolder;
  config: ServerConfig;
  metrics: ServerMetrics;
  scheduler: RequestScheduler;
}

interface ContentPart {
  type: string;
  text?: string;
  image_url?: { url?: string; detail?: string } | string;
}

interface ChatMessage {
  role: string;
  content: string | ContentPart[] | null;
}

interface ChatRequest extends GenerationFields {
  model?: string;
  messages: ChatMessage[];
  stream?: boolean;
  stream_options?: { include_usage?: boolean };
  n?: number;
  region?: unknown;
}

/**
 * Bytes of an allow-listed remote image, with size and time limits and no redirects. `signal` is the
 * request's own (client gone, deadline, shutdown): the fetch stops with it too.
 */
async function fetchRemoteImage(
  url: string,
  remote: RemoteImageConfig,
  signal: AbortSignal,
): Promise<Uint8Array> {
  if (!remote.allow.some((prefix) => url.startsWith(prefix))) {
    throw new RegionVqaError(
      "remote_fetch_forbidden",
      "This server does not fetch remote image URLs" +
        (remote.allow.length > 0 ? " outside its allow-list" : "") +
        "; send the image as a data URL (data:image/png;base64,...).",
    );
  }
  let response: Response;
  try {
    // Redirects are refused: they could lead outside the allow-list.
    response = await fetch(url, {
      redirect: "error",
      signal: AbortSignal.any([signal, AbortSignal.timeout(remote.timeoutMs)]),
    });
  } catch (err) {
    signal.throwIfAborted();
    const e = err as Error;
    if (e.name === "TimeoutError")
      throw new RegionVqaError("timeout", `Fetching the image took longer than ${remote.timeoutMs} ms.`);
    throw new RegionVqaError("image_undecodable", `The image URL could not be fetched: ${e.message}`);
  }
  if (!response.ok || !response.body) {
    throw new RegionVqaError("image_undecodable", `The image URL answered HTTP ${response.status}.`);
  }
  const declared = Number(response.headers.get("content-length") ?? "0");
  const tooLarge = () =>
    new RegionVqaError("image_too_large", `The image at the URL is larger than ${remote.maxBytes} bytes.`, {
      maxBytes: remote.maxBytes,
    });
  if (declared > remote.maxBytes) {
    await response.body.cancel().catch(() => undefined);
    throw tooLarge();
  }
  const chunks: Uint8Array[] = [];
  let total = 0;
  const reader = response.body.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      total += value.length;
      if (total > remote.maxBytes) {
        await reader.cancel().catch(() => undefined);
        throw tooLarge();
      }
      chunks.push(value);
    }
  } catch (err) {
    if (err instanceof RegionVqaError) throw err;
    signal.throwIfAborted();
    const e = err as Error;
    if (e.name === "TimeoutError")
      throw new RegionVqaError("timeout", `Fetching the image took longer than ${remote.timeoutMs} ms.`);
    throw new RegionVqaError("image_undecodable", `Reading the image URL failed: ${e.message}`);
  }
  return Buffer.concat(chunks);
}

interface ParsedChat {
  systemPrompt?: string;
  imageUrl: string;
  history: Turn[];
  question: string;
}

function textOf(message: ChatMessage, index: number): { text: string; images: string[] } {
  if (message.content === null || message.content === undefined) return { text: "", images: [] };
  if (typeof message.content === "string") return { text: message.content, images: [] };
  const texts: string[] = [];
  const images: string[] = [];
  for (const part of message.content) {
    if (part.type === "text") texts.push(part.text ?? "");
    else if (part.type === "image_url") {
      const url = typeof part.image_url === "string" ? part.image_url : part.image_url?.url;
      if (typeof url !== "string" || url === "") {
        throw new RegionVqaError(
          "invalid_request",
          `messages[${index}] has an image_url part without a url.`,
        );
      }
      images.push(url);
    } else {
      throw new RegionVqaError(
        "invalid_request",
        `messages[${index}] has a "${part.type}" part; only text and image_url are supported.`,
      );
    }
  }
  return { text: texts.join("\n"), images };
}

/** Messages -> system prompt, the one image, earlier turns and the final question. */
function parseMessages(messages: ChatMessage[], config: ServerConfig): ParsedChat {
  const limits = config.limits;
  if (messages.length > limits.maxMessages) {
    throw new RegionVqaError(
      "invalid_request",
      `The request has ${messages.length} messages; the limit is ${limits.maxMessages}.`,
    );
  }
  const systemTexts: string[] = [];
  const images: string[] = [];
  // Consecutive messages of one role are joined: the prompt format alternates user and assistant.
  const turns: Array<{ role: "user" | "assistant"; text: string }> = [];
  messages.forEach((message, i) => {
    const { text, images: found } = textOf(message, i);
    if (message.role === "system" || message.role === "developer") {
      if (found.length > 0) throw new RegionVqaError("invalid_request", "Images belong in user messages.");
      systemTexts.push(text);
      return;
    }
    if (message.role !== "user" && message.role !== "assistant") {
      throw new RegionVqaError(
        "invalid_request",
        `messages[${i}] has role "${message.role}"; use system, user or assistant.`,
      );
    }
    if (found.length > 0 && message.role !== "user")
      throw new RegionVqaError("invalid_request", "Images belong in user messages.");
    images.push(...found);
    const last = turns[turns.length - 1];
    if (last && last.role === message.role) last.text = [last.text, text].filter((t) => t !== "").join("\n");
    else turns.push({ role: message.role, text });
  });
  if (images.length === 0) {
    throw new RegionVqaError(
      "image_missing",
      "No image: add an image_url content part (a data URL) to a user message.",
    );
  }
  if (images.length > 1) {
    throw new RegionVqaError(
      "invalid_request",
      `The messages hold ${images.length} images; a conversation is about one image.`,
    );
  }
  if (turns.length === 0 || turns[turns.length - 1].role !== "user") {
    throw new RegionVqaError("invalid_request", "The last message must be a user message with the question.");
  }
  if (turns[0].role !== "user")
    throw new RegionVqaError("invalid_request", "The conversation must start with a user message.");
  const question = checkQuestion(turns[turns.length - 1].text, limits, "last user message");
  const history: Turn[] = [];
  for (let i = 0; i + 1 < turns.length - 1; i += 2) {
    history.push({
      question: checkQuestion(turns[i].text, limits, "user message"),
      answer: turns[i + 1].text,
    });
  }
  const systemPrompt = systemTexts.join("\n").trim();
  return {
    systemPrompt: systemPrompt === "" ? undefined : systemPrompt,
    imageUrl: images[0],
    history,
    question,
  };
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

const openAiRoutes: FastifyPluginAsync<OpenAiRoutesOptions> = async (
  app,
  { pipeline, config, metrics, scheduler },
) => {
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
        data: [{ id: p.models.id, object: "model", created: 0, owned_by: "region-vqa" }],
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
      const chat = parseMessages(body.messages, config);
      const generation = generationOptions(body, config.limits);
      const specs =
        body.region === undefined || body.region === null ? [] : [parseRegion(body.region, config.limits)];
      const lease = await scheduler.admit(clientAbortSignal(request, reply));
      try {
        const image = /^https?:\/\//i.test(chat.imageUrl)
          ? await fetchRemoteImage(chat.imageUrl, config.remoteImages, lease.signal)
          : bytesFromField(chat.imageUrl, "image", {
              missing: "image_missing",
              undecodable: "image_undecodable",
            });
        const { regions, decoded, decodeSeconds } = await resolveRegions(image, specs, config.limits);
        metrics.observeStage("decode", decodeSeconds);
        lease.throwIfAborted();
        // Built apart from the call: `signal` lets the pipeline give up waiting for an LLM slot.
        const openOptions = {
          history: chat.history,
          systemPrompt: chat.systemPrompt,
          signal: lease.signal,
          decoded,
        };
        const conversation = await p.openConversation(image, regions[0], openOptions);
        try {
          return await complete(
            conversation,
            chat.question,
            body,
            reply,
            { ...generation, signal: lease.signal },
            () => lease.throwIfAborted(),
          );
        } finally {
          await conversation.dispose().catch(() => undefined);
        }
      } catch (err) {
        throw lease.reasonFor(err);
      } finally {
        lease.release();
      }
    },
  );

  /** Asks the question and answers as one chat.completion object or as a stream of chunks. */
  async function complete(
    conversation: Conversation,
    question: string,
    body: ChatRequest,
    reply: FastifyReply,
    generation: GenerationOptions,
    throwIfAborted: () => void,
  ): Promise<unknown> {
    const id = `chatcmpl-${randomUUID().replaceAll("-", "")}`;
    const created = Math.floor(Date.now() / 1000);
    const model = pipeline.get().models.id;
    const answer = conversation.ask(question, generation);
    const iterator = answer[Symbol.asyncIterator]();
    const first = await iterator.next();

    if (body.stream !== true) {
      const text = await readAnswerText(iterator, first);
      const result = await answer.result;
      metrics.recordAnswer(result);
      // Cut short by the deadline (or a vanished client): an error, not a short answer.
      throwIfAborted();
      return {
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
      };
    }

    const events = new EventStream(reply);
    const chunk = (delta: Record<string, unknown>, finish: string | null) => ({
      id,
      object: "chat.completion.chunk",
      created,
      model,
      choices: [{ index: 0, delta, finish_reason: finish, logprobs: null }],
    });
    events.send(chunk({ role: "assistant", content: "" }, null));
    try {
      for (let step = first; !step.done; step = await iterator.next()) {
        events.send(chunk({ content: step.value }, null));
      }
      const result = await answer.result;
      metrics.recordAnswer(result);
      throwIfAborted();
      events.send(chunk({}, finishReasonOf(result.finishReason)));
      if (body.stream_options?.include_usage) {
        events.send({
          id,
          object: "chat.completion.chunk",
          created,
          model,
          choices: [],
          usage: usageOf(result),
        });
      }
    } catch (err) {
      events.send(errorBody(toRegionVqaError(err)));
    }
    events.send("[DONE]");
    events.end();
    return reply;
  }
};

export default openAiRoutes;
