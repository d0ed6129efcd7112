/**
 * The HTTP server on loopback: native region endpoints (JSON and multipart, streamed and not),
 * follow-up turns, ops endpoints, the OpenAPI document. Bad inputs are in api-errors.test.ts.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  dataUrl,
  json,
  makeImage,
  makeMask,
  readSse,
  startServer,
  TemporaryPipelineDouble,
  type RunningServer,
} from "./api-support.js";

let server: RunningServer;
let image: Buffer;
let rgba: Buffer;

beforeAll(async () => {
  // TEMPORARY: the double stands in until src/pipeline/index.ts lands (see api-support.ts).
  server = await startServer(new TemporaryPipelineDouble());
  image = await makeImage(64, 48);
  rgba = await makeImage(64, 48, true);
});
afterAll(async () => server?.close());

const post = (path: string, body: unknown) =>
  fetch(`${server.url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });

describe("ops endpoints", () => {
  it("answers /healthz, /readyz and /metrics", async () => {
    expect(await json(await fetch(`${server.url}/healthz`))).toEqual({ status: "ok" });
    const ready = await fetch(`${server.url}/readyz`);
    expect(ready.status).toBe(200);
    expect((await json(ready)).status).toBe("ready");
    await fetch(`${server.url}/healthz`);
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    expect(metrics).toMatch(
      /region_vqa_http_requests_total\{route="\/healthz",method="GET",status="200"\} [1-9]/,
    );
    expect(metrics).toContain("region_vqa_pipeline_stage_duration_seconds");
    expect(metrics).toContain("region_vqa_queue_depth");
  });

  it("serves an OpenAPI document listing every endpoint, and a docs page", async () => {
    const doc = await json(await fetch(`${server.url}/docs/json`));
    expect(doc.openapi).toMatch(/^3\./);
    for (const p of [
      "/v1/regions/caption",
      "/v1/regions/ask",
      "/v1/chat/completions",
      "/v1/models",
      "/healthz",
      "/readyz",
      "/metrics",
    ]) {
      expect(Object.keys(doc.paths)).toContain(p);
    }
    const ask = doc.paths["/v1/regions/ask"].post.requestBody.content;
    expect(Object.keys(ask)).toEqual(expect.arrayContaining(["application/json", "multipart/form-data"]));
    expect(ask["multipart/form-data"].schema.properties.image).toMatchObject({
      type: "string",
      format: "binary",
    });
    const page = await fetch(`${server.url}/docs/`);
    expect(page.status).toBe(200);
    expect(await page.text()).toContain("swagger");
  });

  it("reports /readyz 503 while the pipeline is still loading", async () => {
    let finish!: (p: TemporaryPipelineDouble) => void;
    const loading = new Promise<TemporaryPipelineDouble>((r) => (finish = r));
    const s = await startServer(loading);
    try {
      const r = await fetch(`${s.url}/readyz`);
      expect(r.status).toBe(503);
      const ask = await fetch(`${s.url}/v1/models`);
      expect(ask.status).toBe(503);
      expect((await json(ask)).error.code).toBe("overloaded");
      finish(new TemporaryPipelineDouble());
      await new Promise((r) => setTimeout(r, 50));
      expect((await fetch(`${s.url}/readyz`)).status).toBe(200);
    } finally {
      await s.close();
    }
  });
});

describe("POST /v1/regions/caption", () => {
  it("captions each region of a JSON request, in order", async () => {
    const r = await post("/v1/regions/caption", {
      image: dataUrl(image),
      regions: [{ box: [0, 0, 32, 48] }, { box: "32,0,64,24" }, "whole"],
    });
    expect(r.status).toBe(200);
    const body = await json(r);
    expect(body.captions).toHaveLength(3);
    expect(body.captions.map((c: { index: number }) => c.index)).toEqual([0, 1, 2]);
    // The double reports what it measured in the region: 32x48 red pixels, 32x24 blue, all 64x48.
    expect(body.captions[0].caption).toContain("1536 pixels mostly red");
    expect(body.captions[1].caption).toContain("768 pixels mostly blue");
    expect(body.captions[2].caption).toContain("3072 pixels");
    expect(body.usage.completion_tokens).toBe(
      body.captions.reduce(
        (n: number, c: { usage: { completion_tokens: number } }) => n + c.usage.completion_tokens,
        0,
      ),
    );
  });

  it("takes multipart uploads: an image file, mask files and a box field; detail long", async () => {
    const form = new FormData();
    form.append("image", new Blob([image], { type: "image/png" }), "scene.png");
    form.append("mask", new Blob([await makeMask(64, 48, [40, 10, 50, 20])], { type: "image/png" }), "m.png");
    form.append("box", "0,0,10,10");
    form.append("options", JSON.stringify({ detail: "long", max_tokens: 64 }));
    const r = await fetch(`${server.url}/v1/regions/caption`, { method: "POST", body: form });
    expect(r.status).toBe(200);
    const body = await json(r);
    expect(body.captions).toHaveLength(2);
    expect(body.captions[0].caption).toMatch(/^A long caption: a region of 100 pixels mostly blue/);
    expect(body.captions[1].caption).toContain("100 pixels mostly red");
  });

  it("uses the image's alpha channel when no region is given", async () => {
    const r = await post("/v1/regions/caption", { image: rgba.toString("base64") });
    expect(r.status).toBe(200);
    expect((await json(r)).captions[0].caption).toContain("1536 pixels mostly blue");
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
    expect(a1.answer).toContain("256 pixels mostly red");
    expect(a1.turns).toBe(1);
    const r2 = await post("/v1/regions/ask", { conversation_id: a1.conversation_id, question: "And now?" });
    expect(r2.status).toBe(200);
    const a2 = await json(r2);
    expect(a2.conversation_id).toBe(a1.conversation_id);
    expect(a2.answer).toMatch(/^Turn 2:/);
    expect(a2.turns).toBe(2);
  });

  it("honours max_tokens and stop", async () => {
    const r = await post("/v1/regions/ask", { image: dataUrl(image), question: "Q?", max_tokens: 3 });
    const a = await json(r);
    expect(a.finish_reason).toBe("length");
    expect(a.usage.completion_tokens).toBe(3);
    expect(a.answer.split(" ")).toHaveLength(3);
  });

  it("streams the answer as server-sent events", async () => {
    const r = await post("/v1/regions/ask", {
      image: dataUrl(image),
      polygon: [0, 0, 20, 0, 20, 20, 0, 20],
      question: "Hi?",
      stream: true,
    });
    expect(r.status).toBe(200);
    expect(r.headers.get("content-type")).toMatch(/^text\/event-stream/);
    const events = await readSse(r);
    expect(events[0].event).toBe("conversation");
    const { conversation_id } = JSON.parse(events[0].data);
    const deltas = events.filter((e) => e.event === "delta").map((e) => JSON.parse(e.data).text);
    expect(deltas.length).toBeGreaterThan(3);
    const done = events.find((e) => e.event === "done");
    expect(done).toBeDefined();
    const final = JSON.parse(done!.data);
    expect(final.conversation_id).toBe(conversation_id);
    expect(deltas.join("")).toBe(final.answer);
    expect(final.answer).toContain("400 pixels mostly red");
  });

  it("takes a multipart upload with a mask file and a question", async () => {
    const form = new FormData();
    form.append("image", new Blob([image]), "scene.png");
    form.append("mask", new Blob([await makeMask(64, 48, [48, 0, 64, 8])]), "mask.png");
    form.append("question", "What is it?");
    form.append("max_tokens", "40");
    const r = await fetch(`${server.url}/v1/regions/ask`, { method: "POST", body: form });
    expect(r.status).toBe(200);
    expect((await json(r)).answer).toContain("128 pixels mostly blue");
  });

  it("counts requests per route in /metrics", async () => {
    const text = await (await fetch(`${server.url}/metrics`)).text();
    expect(text).toMatch(
      /region_vqa_http_requests_total\{route="\/v1\/regions\/ask",method="POST",status="200"\} [1-9]/,
    );
    expect(text).toMatch(/region_vqa_tokens_total\{kind="completion"\} [1-9]/);
  });
});
