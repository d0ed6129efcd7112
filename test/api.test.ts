/**
 * The native region endpoints end to end: a real server on loopback over the real pipeline with small
 * real models (random LLM weights: answers are gibberish, so the tests check that one region stated in
 * different ways gives the same greedy answer, that follow-ups reuse the real conversation, and that
 * metrics see the real stages). The API's own logic (formats, ids, options, ops, OpenAPI) is tested
 * in-process in api-inject.test.ts; bad inputs in api-errors.test.ts.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  dataUrl,
  json,
  makeImage,
  makeMask,
  postJson,
  readSse,
  realPipeline,
  startServer,
  type RunningServer,
} from "./support/server.js";
import type { LocalRegionVqaPipeline } from "../src/pipeline/index.js";
import { ServerMetrics } from "../src/api/index.js";

const metrics = new ServerMetrics();
let pipeline: LocalRegionVqaPipeline;
let server: RunningServer;
let image: Buffer;
let rgba: Buffer;

beforeAll(async () => {
  pipeline = await realPipeline(metrics);
  server = await startServer(pipeline, { limits: { maxTokens: 12 } }, { metrics });
  image = await makeImage(64, 48);
  rgba = await makeImage(64, 48, true);
});
afterAll(async () => {
  await server?.close();
  await pipeline?.dispose();
});

const post = (path: string, body: unknown) => postJson(server, path, body);

type Caption = {
  index: number;
  caption: string;
  finish_reason: string;
  usage: { completion_tokens: number };
};

describe("POST /v1/regions/caption", () => {
  it("captions each region of a JSON request, in order, deterministically at temperature 0", async () => {
    const request = {
      image: dataUrl(image),
      regions: [{ box: [0, 0, 32, 48] }, { box: "32,0,64,24" }, "whole"],
      max_tokens: 6,
    };
    const r = await post("/v1/regions/caption", request);
    expect(r.status).toBe(200);
    const body = await json(r);
    expect(body.model).toBe("tiny-test");
    expect(body.captions).toHaveLength(3);
    expect(body.captions.map((c: Caption) => c.index)).toEqual([0, 1, 2]);
    for (const c of body.captions as Caption[]) {
      expect(typeof c.caption).toBe("string");
      expect(["stop", "length"]).toContain(c.finish_reason);
      expect(c.usage.completion_tokens).toBeGreaterThan(0);
      expect(c.usage.completion_tokens).toBeLessThanOrEqual(6);
    }
    expect(body.usage.completion_tokens).toBe(
      body.captions.reduce((n: number, c: Caption) => n + c.usage.completion_tokens, 0),
    );
    const again = await json(await post("/v1/regions/caption", request));
    expect(again.captions.map((c: Caption) => c.caption)).toEqual(
      body.captions.map((c: Caption) => c.caption),
    );
  });

  it("takes multipart uploads (image file, mask file, box field, options), same as the JSON form", async () => {
    const mask = await makeMask(64, 48, [40, 10, 50, 20]);
    const form = new FormData();
    form.append("image", new Blob([image], { type: "image/png" }), "scene.png");
    form.append("mask", new Blob([mask], { type: "image/png" }), "m.png");
    form.append("box", "0,0,10,10");
    form.append("options", JSON.stringify({ detail: "long", max_tokens: 5 }));
    const r = await fetch(`${server.url}/v1/regions/caption`, { method: "POST", body: form });
    expect(r.status).toBe(200);
    const body = await json(r);
    expect(body.captions).toHaveLength(2);
    const viaJson = await json(
      await post("/v1/regions/caption", {
        image: image.toString("base64"),
        regions: [{ mask: dataUrl(mask) }, { box: [0, 0, 10, 10] }],
        detail: "long",
        max_tokens: 5,
      }),
    );
    expect(viaJson.captions.map((c: Caption) => c.caption)).toEqual(
      body.captions.map((c: Caption) => c.caption),
    );
  });

  it("uses the image's alpha channel when no region is given", async () => {
    const byAlpha = await json(
      await post("/v1/regions/caption", { image: rgba.toString("base64"), max_tokens: 6 }),
    );
    // The alpha channel of `rgba` is opaque on the right half: the same region as this box.
    const byBox = await json(
      await post("/v1/regions/caption", {
        image: rgba.toString("base64"),
        box: [32, 0, 64, 48],
        max_tokens: 6,
      }),
    );
    expect(byAlpha.captions[0].caption).toBe(byBox.captions[0].caption);
  });
});

describe("POST /v1/regions/ask", () => {
  it("answers, returns a conversation id, and continues the conversation on a follow-up", async () => {
    const r1 = await post("/v1/regions/ask", {
      image: dataUrl(image),
      box: [0, 0, 16, 16],
      question: "What colour?",
    });
    expect(r1.status).toBe(200);
    const a1 = await json(r1);
    expect(a1.conversation_id).toEqual(expect.any(String));
    expect(a1.turns).toBe(1);
    expect(a1.usage.completion_tokens).toBeGreaterThan(0);
    expect(pipeline.getConversation(a1.conversation_id)).toBeDefined();
    const r2 = await post("/v1/regions/ask", { conversation_id: a1.conversation_id, question: "And now?" });
    expect(r2.status).toBe(200);
    const a2 = await json(r2);
    expect(a2.conversation_id).toBe(a1.conversation_id);
    expect(a2.turns).toBe(2);
    expect(a2.usage.prompt_tokens).toBeGreaterThan(0);
    // Ending it frees its slot; then it is gone.
    const del = await fetch(`${server.url}/v1/regions/conversations/${a1.conversation_id}`, {
      method: "DELETE",
    });
    expect(await json(del)).toEqual({ conversation_id: a1.conversation_id, closed: true });
    expect(pipeline.getConversation(a1.conversation_id)).toBeUndefined();
    const r3 = await post("/v1/regions/ask", {
      conversation_id: a1.conversation_id,
      question: "Still there?",
    });
    expect(r3.status).toBe(404);
    expect((await json(r3)).error.code).toBe("conversation_not_found");
  });

  it("honours max_tokens", async () => {
    const a = await json(
      await post("/v1/regions/ask", { image: dataUrl(image), question: "Q?", max_tokens: 3 }),
    );
    expect(a.usage.completion_tokens).toBeLessThanOrEqual(3);
    if (a.finish_reason === "length") expect(a.usage.completion_tokens).toBe(3);
  });

  it("streams the answer as server-sent events, equal to the unstreamed answer", async () => {
    const request = {
      image: dataUrl(image),
      polygon: [0, 0, 20, 0, 20, 20, 0, 20],
      question: "Hi?",
      max_tokens: 8,
    };
    const plain = await json(await post("/v1/regions/ask", request));
    const r = await post("/v1/regions/ask", { ...request, stream: true });
    expect(r.status).toBe(200);
    expect(r.headers.get("content-type")).toMatch(/^text\/event-stream/);
    const events = await readSse(r);
    expect(events[0].event).toBe("conversation");
    const { conversation_id } = JSON.parse(events[0].data);
    const deltas = events.filter((e) => e.event === "delta").map((e) => JSON.parse(e.data).text);
    expect(deltas.length).toBeGreaterThan(0);
    const done = events.find((e) => e.event === "done");
    expect(done).toBeDefined();
    const final = JSON.parse(done!.data);
    expect(final.conversation_id).toBe(conversation_id);
    expect(deltas.join("").trim()).toBe(final.answer);
    expect(final.answer).toBe(plain.answer);
  });

  it("takes a multipart upload with a mask file and a question, same as JSON", async () => {
    const mask = await makeMask(64, 48, [48, 0, 64, 8]);
    const form = new FormData();
    form.append("image", new Blob([image]), "scene.png");
    form.append("mask", new Blob([mask]), "mask.png");
    form.append("question", "What is it?");
    form.append("max_tokens", "6");
    const r = await fetch(`${server.url}/v1/regions/ask`, { method: "POST", body: form });
    expect(r.status).toBe(200);
    const viaForm = await json(r);
    const viaJson = await json(
      await post("/v1/regions/ask", {
        image: dataUrl(image),
        mask: dataUrl(mask),
        question: "What is it?",
        max_tokens: 6,
      }),
    );
    expect(viaForm.answer).toBe(viaJson.answer);
    expect(viaForm.conversation_id).not.toBe(viaJson.conversation_id);
  });

  it("reports requests, pipeline stages and cache lookups in /metrics", async () => {
    const text = await (await fetch(`${server.url}/metrics`)).text();
    expect(text).toMatch(
      /region_vqa_http_requests_total\{route="\/v1\/regions\/ask",method="POST",status="200"\} [1-9]/,
    );
    expect(text).toMatch(/region_vqa_tokens_total\{kind="completion"\} [1-9]/);
    expect(text).toMatch(/region_vqa_queue_depth\{queue="pipeline_requests"\} 0/);
    expect(text).toMatch(/region_vqa_pipeline_stage_duration_seconds_count\{stage="encode"\} [1-9]/);
    expect(text).toMatch(/region_vqa_pipeline_stage_duration_seconds_count\{stage="decode"\} [1-9]/);
    expect(text).toMatch(/region_vqa_cache_lookups_total\{cache="vision_embeddings",result="hit"\} [1-9]/);
  });
});
