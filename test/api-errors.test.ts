/**
 * Every kind of bad input gets a 4xx JSON `{error: {code, message}}`, never a 500 or a hang. This is
 * the API's own logic, so it runs in-process (`app.inject()`) over the scripted pipeline
 * (support/scripted-pipeline.ts): no model runs. The same corpus against real engines and real
 * sockets is robustness.test.ts.
 */
import type { FastifyInstance, InjectOptions } from "fastify";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ScriptedPipeline } from "./support/scripted-pipeline.js";
import { dataUrl, injectServer, makeImage, makeMask } from "./support/server.js";

let pipeline: ScriptedPipeline;
let server: FastifyInstance;
let image: string;
let big: string;
let wrongMask: string;
let emptyMask: string;

beforeAll(async () => {
  pipeline = new ScriptedPipeline();
  server = await injectServer(pipeline, {
    limits: {
      maxBodyBytes: 200_000,
      maxImagePixels: 100 * 100,
      maxRegions: 3,
      maxQuestionChars: 50,
      maxTokens: 100,
    },
  });
  image = dataUrl(await makeImage(64, 48));
  big = dataUrl(await makeImage(101, 100));
  wrongMask = dataUrl(await makeMask(32, 32, [0, 0, 8, 8]));
  emptyMask = dataUrl(await makeMask(64, 48, [0, 0, 0, 0]));
});
afterAll(async () => {
  await server?.close();
});

interface Answer {
  status: number;
  headers: Record<string, string | string[] | number | undefined>;
  text: string;
}

async function request(app: FastifyInstance, options: InjectOptions): Promise<Answer> {
  const r = await app.inject(options);
  return { status: r.statusCode, headers: r.headers, text: r.body };
}

async function expectError(answer: Answer | Promise<Answer>, status: number, code: string): Promise<string> {
  const { status: got, headers, text } = await answer;
  expect(got, text).toBe(status);
  expect(String(headers["content-type"])).toMatch(/^application\/json/);
  const body = JSON.parse(text);
  expect(body.error.code).toBe(code);
  expect(typeof body.error.message).toBe("string");
  expect(body.error.message.length).toBeGreaterThan(5);
  return body.error.message;
}

const post = (path: string, body: unknown, headers: Record<string, string> = {}) =>
  request(server, {
    method: "POST",
    url: path,
    headers: { "content-type": "application/json", ...headers },
    payload: typeof body === "string" ? body : JSON.stringify(body),
  });

describe("bad input to /v1/regions/ask", () => {
  const cases: Array<[string, Record<string, unknown>, number, string]> = [
    ["missing image", { question: "What?" }, 400, "image_missing"],
    [
      "undecodable image",
      { image: Buffer.from("not an image").toString("base64"), question: "Q" },
      400,
      "image_undecodable",
    ],
    ["image not base64", { image: "%%%%", question: "Q" }, 400, "image_undecodable"],
    ["image of the wrong type", { image: 42, question: "Q" }, 400, "invalid_request"],
    ["too many pixels", { image: "BIG", question: "Q" }, 400, "image_too_many_pixels"],
    ["mask of the wrong size", { image: "IMG", mask: "WRONG", question: "Q" }, 400, "mask_size_mismatch"],
    ["empty mask", { image: "IMG", mask: "EMPTY", question: "Q" }, 400, "region_empty"],
    ["box of 3 numbers", { image: "IMG", box: [1, 2, 3], question: "Q" }, 400, "box_invalid"],
    ["box as text with a word", { image: "IMG", box: "1,2,x,4", question: "Q" }, 400, "box_invalid"],
    ["box outside the image", { image: "IMG", box: [0, 0, 65, 10], question: "Q" }, 400, "box_invalid"],
    ["box with x2 < x1", { image: "IMG", box: [10, 0, 5, 10], question: "Q" }, 400, "box_invalid"],
    ["polygon of two points", { image: "IMG", polygon: [0, 0, 5, 5], question: "Q" }, 400, "polygon_invalid"],
    [
      "polygon with a string",
      { image: "IMG", polygon: [0, 0, "a", 5, 5, 5], question: "Q" },
      400,
      "polygon_invalid",
    ],
    [
      "zero-area polygon",
      { image: "IMG", polygon: [0, 0, 10, 10, 20, 20], question: "Q" },
      400,
      "region_empty",
    ],
    ["RLE without size", { image: "IMG", rle: { counts: [1, 2] }, question: "Q" }, 400, "rle_invalid"],
    [
      "RLE of the wrong size",
      { image: "IMG", rle: { size: [10, 10], counts: [50, 50] }, question: "Q" },
      400,
      "rle_invalid",
    ],
    [
      "RLE counts not summing up",
      { image: "IMG", rle: { size: [48, 64], counts: [5, 5] }, question: "Q" },
      400,
      "rle_invalid",
    ],
    [
      "region of an unknown kind",
      { image: "IMG", region: { kind: "circle" }, question: "Q" },
      400,
      "region_invalid",
    ],
    [
      "region with two forms",
      { image: "IMG", region: { box: [0, 0, 4, 4], polygon: [0, 0, 1, 1, 2, 0] }, question: "Q" },
      400,
      "region_invalid",
    ],
    ["alpha region without alpha", { image: "IMG", region: "alpha", question: "Q" }, 400, "region_invalid"],
    [
      "two regions for one question",
      { image: "IMG", box: [0, 0, 4, 4], polygon: [0, 0, 4, 0, 4, 4], question: "Q" },
      400,
      "invalid_request",
    ],
    ["missing question", { image: "IMG" }, 400, "invalid_request"],
    ["question of the wrong type", { image: "IMG", question: ["a"] }, 400, "invalid_request"],
    ["too long a question", { image: "IMG", question: "x".repeat(51) }, 400, "question_too_long"],
    [
      "max_tokens of the wrong type",
      { image: "IMG", question: "Q", max_tokens: "many" },
      400,
      "invalid_request",
    ],
    ["max_tokens above the limit", { image: "IMG", question: "Q", max_tokens: 1000 }, 400, "invalid_request"],
    ["temperature out of range", { image: "IMG", question: "Q", temperature: 7 }, 400, "invalid_request"],
    ["stream of the wrong type", { image: "IMG", question: "Q", stream: { yes: 1 } }, 400, "invalid_request"],
    ["unknown conversation id", { conversation_id: "nope", question: "Q" }, 404, "conversation_not_found"],
  ];
  for (const [name, body, status, code] of cases) {
    it(`${name} -> ${status} ${code}`, async () => {
      const substituted = { ...body };
      for (const [k, v] of Object.entries(substituted)) {
        if (v === "IMG") substituted[k] = image;
        if (v === "BIG") substituted[k] = big;
        if (v === "WRONG") substituted[k] = wrongMask;
        if (v === "EMPTY") substituted[k] = emptyMask;
      }
      await expectError(await post("/v1/regions/ask", substituted), status, code);
    });
  }

  it("a follow-up that also sends an image is refused", async () => {
    const first = JSON.parse((await post("/v1/regions/ask", { image, question: "Q" })).text);
    await expectError(
      await post("/v1/regions/ask", { conversation_id: first.conversation_id, image, question: "Q2" }),
      400,
      "invalid_request",
    );
  });
});

describe("bad requests in general", () => {
  it("too many regions -> too_many_regions", async () => {
    const regions = [0, 1, 2, 3].map((i) => ({ box: [i, 0, i + 4, 4] }));
    await expectError(await post("/v1/regions/caption", { image, regions }), 400, "too_many_regions");
  });

  it("regions that is not a list -> invalid_request", async () => {
    await expectError(
      await post("/v1/regions/caption", { image, regions: { box: [0, 0, 4, 4] } }),
      400,
      "invalid_request",
    );
  });

  it("a body above the limit -> 413 payload_too_large", async () => {
    const huge = "A".repeat(300_000);
    await expectError(await post("/v1/regions/caption", { image: huge }), 413, "payload_too_large");
  });

  it("a multipart file above the limit -> 413 payload_too_large", async () => {
    const form = new FormData();
    form.append("image", new Blob([new Uint8Array(300_000)]), "big.png");
    form.append("question", "Q");
    const r = await request(server, { method: "POST", url: "/v1/regions/ask", payload: form });
    await expectError(r, 413, "payload_too_large");
  });

  it("malformed JSON -> 400 invalid_request", async () => {
    await expectError(await post("/v1/regions/ask", '{"question": '), 400, "invalid_request");
  });

  it("an unsupported content type -> 415 unsupported_media_type", async () => {
    const r = await request(server, {
      method: "POST",
      url: "/v1/regions/ask",
      headers: { "content-type": "text/plain" },
      payload: "hi",
    });
    await expectError(r, 415, "unsupported_media_type");
  });

  it("bad JSON in a multipart field -> 400 with the field's code", async () => {
    const form = new FormData();
    form.append("image", new Blob([await makeImage(64, 48)]), "a.png");
    form.append("polygon", "[1, 2,");
    form.append("question", "Q");
    await expectError(
      await request(server, { method: "POST", url: "/v1/regions/ask", payload: form }),
      400,
      "polygon_invalid",
    );
    const form2 = new FormData();
    form2.append("image", new Blob([await makeImage(64, 48)]), "a.png");
    form2.append("options", "{nope");
    form2.append("question", "Q");
    await expectError(
      await request(server, { method: "POST", url: "/v1/regions/ask", payload: form2 }),
      400,
      "invalid_request",
    );
  });

  it("an undecodable multipart mask -> mask_undecodable", async () => {
    const form = new FormData();
    form.append("image", new Blob([await makeImage(64, 48)]), "a.png");
    form.append("mask", new Blob([Buffer.from("garbage")]), "m.png");
    form.append("question", "Q");
    await expectError(
      await request(server, { method: "POST", url: "/v1/regions/ask", payload: form }),
      400,
      "mask_undecodable",
    );
  });

  it("an unknown route -> 404 route_not_found", async () => {
    await expectError(request(server, { url: "/v1/nothing" }), 404, "route_not_found");
  });

  it("chat completions: remote image URL without an allow-list -> 403 remote_fetch_forbidden", async () => {
    const r = await post("/v1/chat/completions", {
      messages: [
        {
          role: "user",
          content: [
            { type: "text", text: "Q" },
            { type: "image_url", image_url: { url: "http://127.0.0.1:1/x.png" } },
          ],
        },
      ],
    });
    await expectError(r, 403, "remote_fetch_forbidden");
  });

  it("chat completions: no image, two images, wrong model, bad roles", async () => {
    const part = { type: "image_url", image_url: { url: image } };
    await expectError(
      await post("/v1/chat/completions", { messages: [{ role: "user", content: "Q" }] }),
      400,
      "image_missing",
    );
    await expectError(
      await post("/v1/chat/completions", {
        messages: [{ role: "user", content: [part, part, { type: "text", text: "Q" }] }],
      }),
      400,
      "invalid_request",
    );
    // Any model name is accepted (clients hard-code names): the request is judged on its messages.
    await expectError(
      await post("/v1/chat/completions", {
        model: "gpt-4o",
        messages: [{ role: "assistant", content: "x" }],
      }),
      400,
      "image_missing",
    );
    await expectError(
      await post("/v1/chat/completions", {
        messages: [
          { role: "tool", content: "x" },
          { role: "user", content: [part] },
        ],
      }),
      400,
      "invalid_request",
    );
    await expectError(await post("/v1/chat/completions", { messages: "hello" }), 400, "invalid_request");
    await expectError(
      await post("/v1/chat/completions", {
        messages: [{ role: "user", content: [part, { type: "text", text: "Q" }] }],
        region: { box: [0, 0] },
      }),
      400,
      "box_invalid",
    );
  });
});

describe("API key and CORS", () => {
  let secured: FastifyInstance;
  beforeAll(async () => {
    secured = await injectServer(pipeline, {
      apiKey: "s3cret",
      corsOrigins: ["http://app.example"],
    });
  });
  afterAll(async () => secured?.close());

  it("refuses /v1 without the key, accepts it with the key; ops stay open", async () => {
    await expectError(request(secured, { url: "/v1/models" }), 401, "unauthorized");
    await expectError(
      request(secured, { url: "/v1/models", headers: { authorization: "Bearer wrong" } }),
      401,
      "unauthorized",
    );
    const ok = await request(secured, { url: "/v1/models", headers: { authorization: "Bearer s3cret" } });
    expect(ok.status).toBe(200);
    expect(JSON.parse(ok.text).data[0].id).toBe("scripted");
    expect((await request(secured, { url: "/healthz" })).status).toBe(200);
  });

  const preflight = (app: FastifyInstance, url: string, origin: string, method: string) =>
    request(app, {
      method: "OPTIONS",
      url,
      headers: { origin, "access-control-request-method": method },
    });

  it("answers CORS preflights for allowed origins only", async () => {
    const allowed = await preflight(secured, "/v1/regions/ask", "http://app.example", "POST");
    expect(allowed.headers["access-control-allow-origin"]).toBe("http://app.example");
    const other = await preflight(secured, "/v1/regions/ask", "http://evil.example", "POST");
    expect(other.headers["access-control-allow-origin"]).toBeUndefined();
  });

  it("lets an allowed origin end a conversation (DELETE passes the preflight)", async () => {
    const r = await preflight(secured, "/v1/regions/conversations/conv_x", "http://app.example", "DELETE");
    const methods = String(r.headers["access-control-allow-methods"] ?? "").split(/\s*,\s*/);
    expect(methods).toContain("DELETE");
  });

  it("sends no CORS headers when CORS is off (the default)", async () => {
    const r = await request(server, { url: "/healthz", headers: { origin: "http://app.example" } });
    expect(r.headers["access-control-allow-origin"]).toBeUndefined();
  });
});
