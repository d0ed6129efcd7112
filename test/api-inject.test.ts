/**
 * The API's own logic, in-process (`app.inject()`) over the scripted pipeline
 * (support/scripted-pipeline.ts), as Fastify's testing guide does: what each route hands the pipeline
 * (regions, history, generation options), the JSON and event-stream formats, conversation ids and
 * lifetimes, failures before and during a stream, and the ops endpoints. No model runs; the same
 * routes on the real engines and real sockets are in api.test.ts, openai.test.ts and the robustness,
 * load, faults and UI suites.
 */
import type { FastifyInstance, InjectOptions } from "fastify";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { RegionVqaError } from "../src/common/errors.js";
import { ScriptedPipeline, type PipelineCall } from "./support/scripted-pipeline.js";
import {
  dataUrl,
  injectServer,
  makeImage,
  makeMask,
  parseSse,
  userMessageWithImage,
} from "./support/server.js";

let pipeline: ScriptedPipeline;
let app: FastifyInstance;
let image: Buffer;
let rgba: Buffer;

beforeAll(async () => {
  pipeline = new ScriptedPipeline();
  app = await injectServer(pipeline, { limits: { maxTokens: 20 } });
  image = await makeImage(64, 48);
  rgba = await makeImage(64, 48, true);
});
afterAll(async () => {
  await app?.close();
});
beforeEach(() => {
  pipeline.calls.length = 0;
});

interface Sent {
  status: number;
  headers: Record<string, string | string[] | number | undefined>;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- a response body, loosely typed for assertions
  body: any;
  text: string;
}

async function send(options: InjectOptions): Promise<Sent> {
  const r = await app.inject(options);
  let body: unknown;
  try {
    body = JSON.parse(r.body);
  } catch {
    body = undefined;
  }
  return { status: r.statusCode, headers: r.headers, body, text: r.body };
}
const post = (url: string, payload: unknown) => send({ method: "POST", url, payload: payload as object });
const callsOf = <K extends PipelineCall["kind"]>(kind: K) =>
  pipeline.calls.filter((c): c is Extract<PipelineCall, { kind: K }> => c.kind === kind);

/** What the scripted pipeline says about a box region [x0, y0, x1, y1) on the 64 x 48 test image. */
const boxRegion = (x0: number, y0: number, x1: number, y1: number) =>
  `mask ${(x1 - x0) * (y1 - y0)}px x${x0}-${x1 - 1} y${y0}-${y1 - 1}`;

describe("ops endpoints", () => {
  it("answers /healthz, /readyz and /metrics", async () => {
    expect((await send({ url: "/healthz" })).body).toEqual({ status: "ok" });
    expect((await send({ url: "/readyz" })).body).toEqual({
      status: "ready",
      model: "scripted",
      devices: { vision: "scripted", llm: "scripted" },
    });
    const metrics = (await send({ url: "/metrics" })).text;
    expect(metrics).toContain('region_vqa_device_info{stage="vision",device="scripted"} 1');
    expect(metrics).toMatch(
      /region_vqa_http_requests_total\{route="\/healthz",method="GET",status="200"\} [1-9]/,
    );
    expect(metrics).toContain("region_vqa_queue_depth");
  });

  it("is not ready while the models load (503 + Retry-After on /v1), ready once they are", async () => {
    let finish!: (p: ScriptedPipeline) => void;
    const loading = injectServer(new Promise<ScriptedPipeline>((r) => (finish = r)));
    const s = await loading;
    try {
      expect((await s.inject({ url: "/readyz" })).statusCode).toBe(503);
      const models = await s.inject({ url: "/v1/models" });
      expect(models.statusCode).toBe(503);
      expect(models.json().error.code).toBe("overloaded");
      expect(Number(models.headers["retry-after"])).toBeGreaterThan(0);
      finish(new ScriptedPipeline());
      await new Promise((r) => setTimeout(r, 30));
      expect((await s.inject({ url: "/readyz" })).statusCode).toBe(200);
    } finally {
      await s.close();
    }
  });

  it("says why when the models failed to load", async () => {
    const failing = Promise.reject(new Error("broken.gguf is truncated"));
    failing.catch(() => undefined);
    const s = await injectServer(failing);
    try {
      await new Promise((r) => setTimeout(r, 30));
      const ready = await s.inject({ url: "/readyz" });
      expect(ready.statusCode).toBe(503);
      expect(ready.json().error.message).toMatch(/broken.gguf is truncated/);
      const models = await s.inject({ url: "/v1/models" });
      expect(models.statusCode).toBe(500);
      expect(models.json().error.code).toBe("model_invalid");
    } finally {
      await s.close();
    }
  });

  it("serves an OpenAPI document listing every endpoint, and a docs page", async () => {
    const doc = (await send({ url: "/docs/json" })).body;
    expect(doc.openapi).toMatch(/^3\./);
    for (const p of ["/v1/regions/caption", "/v1/regions/ask", "/v1/chat/completions", "/v1/models"]) {
      expect(Object.keys(doc.paths)).toContain(p);
    }
    for (const p of ["/healthz", "/readyz", "/metrics", "/v1/regions/conversations/{id}"]) {
      expect(Object.keys(doc.paths)).toContain(p);
    }
    const ask = doc.paths["/v1/regions/ask"].post.requestBody.content;
    expect(Object.keys(ask)).toEqual(expect.arrayContaining(["application/json", "multipart/form-data"]));
    expect(ask["multipart/form-data"].schema.properties.image).toMatchObject({
      type: "string",
      format: "binary",
    });
    const page = await send({ url: "/docs/" });
    expect(page.status).toBe(200);
    expect(page.text).toContain("swagger");
  });
});

describe("POST /v1/regions/caption", () => {
  it("hands every region form to the pipeline as the right mask, in order, with the options", async () => {
    const r = await post("/v1/regions/caption", {
      image: dataUrl(image),
      regions: [
        { box: [0, 0, 32, 48] },
        { box: "32,0,64,24" },
        "whole",
        { polygon: [0, 0, 8, 0, 8, 8, 0, 8] },
      ],
      detail: "long",
      max_tokens: 3,
      temperature: 0.5,
      seed: 7,
    });
    expect(r.status).toBe(200);
    const [call] = callsOf("caption");
    expect(call.regions).toEqual([
      boxRegion(0, 0, 32, 48),
      boxRegion(32, 0, 64, 24),
      "whole",
      boxRegion(0, 0, 8, 8),
    ]);
    expect(call.options).toMatchObject({ detail: "long", maxTokens: 3, temperature: 0.5, seed: 7 });
    expect(r.body.model).toBe("scripted");
    expect(r.body.captions.map((c: { index: number }) => c.index)).toEqual([0, 1, 2, 3]);
    // Three words each: "caption (long) of" is cut by max_tokens 3.
    for (const c of r.body.captions) {
      expect(c).toMatchObject({ caption: "caption (long) of", finish_reason: "length" });
      expect(c.usage).toEqual({ prompt_tokens: 5, completion_tokens: 3, total_tokens: 8 });
    }
    expect(r.body.usage).toEqual({ prompt_tokens: 20, completion_tokens: 12, total_tokens: 32 });
  });

  it("reads multipart (image file, mask file, box field, options) as the JSON form", async () => {
    const mask = await makeMask(64, 48, [40, 10, 50, 20]);
    const form = new FormData();
    form.append("image", new Blob([image], { type: "image/png" }), "scene.png");
    form.append("mask", new Blob([mask], { type: "image/png" }), "m.png");
    form.append("box", "0,0,10,10");
    form.append("options", JSON.stringify({ detail: "long", max_tokens: 5 }));
    const viaForm = await send({ method: "POST", url: "/v1/regions/caption", payload: form });
    expect(viaForm.status).toBe(200);
    const viaJson = await post("/v1/regions/caption", {
      image: image.toString("base64"),
      regions: [{ mask: dataUrl(mask) }, { box: [0, 0, 10, 10] }],
      detail: "long",
      max_tokens: 5,
    });
    const [formCall, jsonCall] = callsOf("caption");
    expect(formCall.regions).toEqual([boxRegion(40, 10, 50, 20), boxRegion(0, 0, 10, 10)]);
    expect(jsonCall.regions).toEqual(formCall.regions);
    expect(jsonCall.options.maxTokens).toBe(5);
    expect(viaJson.body.captions).toEqual(viaForm.body.captions);
  });

  it("takes the image's alpha channel as the region when none is given, else the whole image", async () => {
    await post("/v1/regions/caption", { image: rgba.toString("base64") });
    await post("/v1/regions/caption", { image: image.toString("base64") });
    const [alpha, plain] = callsOf("caption");
    // The alpha channel of `rgba` is opaque on the right half.
    expect(alpha.regions).toEqual([boxRegion(32, 0, 64, 48)]);
    expect(plain.regions).toEqual(["whole"]);
    // No max_tokens: the server's limit is the default.
    expect(plain.options.maxTokens).toBe(20);
  });
});

describe("POST /v1/regions/ask", () => {
  it("opens a conversation, continues it by id, ends it with DELETE; then it is gone", async () => {
    const first = await post("/v1/regions/ask", {
      image: dataUrl(image),
      box: [0, 0, 16, 16],
      question: "  What colour?  ",
      system_prompt: "Be brief.",
      stop: "\n",
      top_k: 3,
    });
    expect(first.status).toBe(200);
    const id = first.body.conversation_id;
    expect(id).toMatch(/^conv_scripted_/);
    expect(first.body).toMatchObject({
      model: "scripted",
      answer: `${boxRegion(0, 0, 16, 16)} | What colour? | turn 1`,
      finish_reason: "stop",
      turns: 1,
    });
    const [open] = callsOf("open");
    expect(open.options.systemPrompt).toBe("Be brief.");
    expect(open.region).toBe(boxRegion(0, 0, 16, 16));
    // The question is trimmed; generation options reach the conversation.
    expect(callsOf("ask")[0]).toMatchObject({ conversation: id, question: "What colour?" });
    expect(callsOf("ask")[0].options).toMatchObject({ stop: ["\n"], topK: 3, maxTokens: 20 });

    const second = await post("/v1/regions/ask", { conversation_id: id, question: "And now?" });
    expect(second.body).toMatchObject({ conversation_id: id, turns: 2 });
    expect(second.body.answer).toMatch(/\| And now\? \| turn 2$/);
    expect(callsOf("open")).toHaveLength(1);

    const del = await send({ method: "DELETE", url: `/v1/regions/conversations/${id}` });
    expect(del.body).toEqual({ conversation_id: id, closed: true });
    expect(pipeline.getConversation(id)).toBeUndefined();
    const gone = await post("/v1/regions/ask", { conversation_id: id, question: "Still there?" });
    expect(gone.status).toBe(404);
    expect(gone.body.error.code).toBe("conversation_not_found");
    const deletedTwice = await send({ method: "DELETE", url: `/v1/regions/conversations/${id}` });
    expect(deletedTwice.status).toBe(404);
  });

  it("streams conversation, delta... and done events that add up to the unstreamed answer", async () => {
    const request = {
      image: dataUrl(image),
      polygon: [0, 0, 20, 0, 20, 20, 0, 20],
      question: "Hi?",
      max_tokens: 4,
    };
    const plain = await post("/v1/regions/ask", request);
    const streamed = await post("/v1/regions/ask", { ...request, stream: true });
    expect(streamed.status).toBe(200);
    expect(String(streamed.headers["content-type"])).toMatch(/^text\/event-stream/);
    const events = parseSse(streamed.text);
    expect(events.map((e) => e.event)).toEqual(["conversation", "delta", "delta", "delta", "delta", "done"]);
    const { conversation_id } = JSON.parse(events[0].data);
    const done = JSON.parse(events[5].data);
    expect(done.conversation_id).toBe(conversation_id);
    expect(done.finish_reason).toBe("length");
    const deltas = events.filter((e) => e.event === "delta").map((e) => JSON.parse(e.data).text);
    expect(deltas.join("").trim()).toBe(done.answer);
    expect(done.answer).toBe(plain.body.answer);
    expect(done.usage).toEqual(plain.body.usage);
  });

  it("a failure before the first piece is an HTTP error, and the conversation it opened is gone", async () => {
    const before = pipeline.openConversations.length;
    pipeline.failNextAnswer = { afterPieces: 0, error: new RegionVqaError("context_full", "no room") };
    const r = await post("/v1/regions/ask", { image: dataUrl(image), question: "Q?", stream: true });
    expect(r.status).toBe(400);
    expect(r.body.error).toMatchObject({ code: "context_full", message: "no room" });
    expect(pipeline.openConversations).toHaveLength(before);
  });

  it("a failed GPU is a 503 with Retry-After, not a 500", async () => {
    pipeline.failNextAnswer = {
      afterPieces: 0,
      error: new RegionVqaError("device_failed", "the webgpu device failed"),
    };
    const r = await post("/v1/regions/ask", { image: dataUrl(image), question: "Q?" });
    expect(r.status).toBe(503);
    expect(r.body.error.code).toBe("device_failed");
    expect(Number(r.headers["retry-after"])).toBeGreaterThan(0);
  });

  it("a failure mid-stream arrives as an error event; the conversation stays for another try", async () => {
    pipeline.failNextAnswer = { afterPieces: 2, error: new RegionVqaError("context_full", "no room left") };
    const r = await post("/v1/regions/ask", { image: dataUrl(image), question: "Q?", stream: true });
    const events = parseSse(r.text);
    expect(events.map((e) => e.event)).toEqual(["conversation", "delta", "delta", "error"]);
    expect(JSON.parse(events[3].data).error.code).toBe("context_full");
    const { conversation_id } = JSON.parse(events[0].data);
    expect(pipeline.getConversation(conversation_id)).toBeDefined();
    const again = await post("/v1/regions/ask", { conversation_id, question: "Again?" });
    expect(again.status).toBe(200);
  });

  it("reads a multipart question with a mask file as the JSON form", async () => {
    const mask = await makeMask(64, 48, [48, 0, 64, 8]);
    const form = new FormData();
    form.append("image", new Blob([image]), "scene.png");
    form.append("mask", new Blob([mask]), "mask.png");
    form.append("question", "What is it?");
    form.append("max_tokens", "12");
    form.append("stream", "false");
    const viaForm = await send({ method: "POST", url: "/v1/regions/ask", payload: form });
    expect(viaForm.status).toBe(200);
    expect(viaForm.body.answer).toBe(`${boxRegion(48, 0, 64, 8)} | What is it? | turn 1`);
    expect(callsOf("ask")[0].options.maxTokens).toBe(12);
  });
});

describe("POST /v1/chat/completions", () => {
  it("replays earlier turns as history, joins system messages, answers as chat.completion", async () => {
    const r = await post("/v1/chat/completions", {
      model: "anything",
      messages: [
        { role: "system", content: "Be brief." },
        { role: "developer", content: "Answer in English." },
        userMessageWithImage(dataUrl(image), "What is it?"),
        { role: "assistant", content: "A square." },
        { role: "user", content: "What colour?" },
      ],
      region: { box: [0, 0, 32, 48] },
      max_completion_tokens: 15,
    });
    expect(r.status).toBe(200);
    const [open] = callsOf("open");
    expect(open.region).toBe(boxRegion(0, 0, 32, 48));
    expect(open.options.history).toEqual([{ question: "What is it?", answer: "A square." }]);
    expect(open.options.systemPrompt).toBe("Be brief.\nAnswer in English.");
    expect(callsOf("ask")[0].options.maxTokens).toBe(15);
    expect(r.body).toMatchObject({
      object: "chat.completion",
      model: "scripted",
      choices: [
        {
          index: 0,
          message: { role: "assistant", content: `${boxRegion(0, 0, 32, 48)} | What colour? | turn 2` },
          finish_reason: "stop",
          logprobs: null,
        },
      ],
    });
    expect(r.body.id).toMatch(/^chatcmpl-[0-9a-f]{32}$/);
    expect(r.body.usage.prompt_tokens).toBe(20);
    // Each request is self-contained: nothing stays open.
    expect(pipeline.getConversation(callsOf("ask")[0].conversation)).toBeUndefined();
  });

  it("streams chunks: the role first, content pieces, the finish reason, usage on request, [DONE]", async () => {
    const r = await post("/v1/chat/completions", {
      messages: [userMessageWithImage(dataUrl(rgba), "Hi?")],
      stream: true,
      stream_options: { include_usage: true },
      max_tokens: 2,
    });
    expect(String(r.headers["content-type"])).toMatch(/^text\/event-stream/);
    const events = parseSse(r.text).map((e) => e.data);
    expect(events.at(-1)).toBe("[DONE]");
    const chunks = events.slice(0, -1).map((d) => JSON.parse(d));
    expect(new Set(chunks.map((c) => c.id)).size).toBe(1);
    expect(chunks.every((c) => c.object === "chat.completion.chunk" && c.model === "scripted")).toBe(true);
    expect(chunks[0].choices[0].delta).toEqual({ role: "assistant", content: "" });
    const content = chunks.slice(1, 3).map((c) => c.choices[0].delta.content);
    // The alpha channel is the region (right half); two pieces of the answer, then the limit.
    expect(content.join("")).toBe("mask 1536px");
    expect(chunks[3].choices[0]).toMatchObject({ delta: {}, finish_reason: "length" });
    expect(chunks[4]).toMatchObject({ choices: [], usage: { completion_tokens: 2 } });
    expect(chunks).toHaveLength(5);
    expect(callsOf("open")[0].region).toBe(boxRegion(32, 0, 64, 48));
  });

  it("a failure mid-stream is an error chunk, then [DONE]", async () => {
    pipeline.failNextAnswer = { afterPieces: 1, error: new RegionVqaError("context_full", "full") };
    const r = await post("/v1/chat/completions", {
      messages: [userMessageWithImage(dataUrl(image), "Q?")],
      stream: true,
    });
    const events = parseSse(r.text).map((e) => e.data);
    expect(events).toHaveLength(4);
    expect(JSON.parse(events[2]).error.code).toBe("context_full");
    expect(events[3]).toBe("[DONE]");
  });
});

describe("bad generation fields are refused before the request reaches the pipeline", () => {
  const bodies: Array<[string, () => Record<string, unknown>]> = [
    ["/v1/regions/caption", () => ({ image: dataUrl(image), box: [0, 0, 32, 48] })],
    ["/v1/regions/ask", () => ({ image: dataUrl(image), question: "What is it?" })],
    ["/v1/chat/completions", () => ({ messages: [userMessageWithImage(dataUrl(image), "What is it?")] })],
  ];
  for (const [url, body] of bodies) {
    it(`a negative seed on ${url} is a 400 with no pipeline call; a valid one is answered`, async () => {
      const refused = await post(url, { ...body(), seed: -1, temperature: 0.7 });
      expect(refused.status).toBe(400);
      expect(refused.body.error.code).toBe("invalid_request");
      expect(pipeline.calls).toEqual([]);
      const ok = await post(url, { ...body(), seed: 3, temperature: 0.7 });
      expect(ok.status).toBe(200);
      expect(pipeline.calls.length).toBeGreaterThan(0);
    });
  }
});
