/**
 * POST /v1/embeddings on the bundled model (models/shapes: Alpha-CLIP with its CLIP text tower and the
 * miniature segmenter) over a real loopback server, through the official `openai` client: text and
 * region embeddings (unit length, the model's width), float and base64 encodings (the client asks for
 * base64 itself when no format is given, and decodes it), agreement with the classify route's scores,
 * /v1/models, and the error codes.
 */
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { LocalRegionVqaPipeline } from "../src/pipeline/index.js";
import { encodePng } from "../src/shapes/index.js";
import { encodeMaskPng } from "../src/vision/index.js";
import {
  blueCentre,
  bundledPipelineWithSegmenter,
  pointSceneImage,
  pointSceneMasks,
  redCentre,
} from "./support/point-scene.js";
import { ScriptedPipeline } from "./support/scripted-pipeline.js";
import { injectServer, json, postJson, startServer, type RunningServer } from "./support/server.js";

const RED = "a photo of a red square.";
const BLUE = "a photo of a blue circle.";

let pipeline: LocalRegionVqaPipeline;
let server: RunningServer;
let client: OpenAI;
let imageUrl: string;
let maskUrls: string[];

const dataUrl = (png: Buffer | Uint8Array) => `data:image/png;base64,${Buffer.from(png).toString("base64")}`;
const dot = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
};
const norm = (a: ArrayLike<number>) => Math.sqrt(dot(a, a));

/** The client's `input` type has no image objects (an extension): they go through as they are. */
const imageInputs = (items: Array<{ image: string; region?: unknown }>) => items as unknown as string[];

beforeAll(async () => {
  pipeline = await bundledPipelineWithSegmenter({ maxConversations: 2 });
  expect(pipeline.models.text).toMatch(/models\/shapes\/text$/);
  server = await startServer(pipeline, {});
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0 });
  imageUrl = dataUrl(await encodePng(pointSceneImage));
  maskUrls = await Promise.all(pointSceneMasks.map(async (m) => dataUrl(await encodeMaskPng(m))));
}, 120_000);

afterAll(async () => {
  await server?.close();
  await pipeline?.dispose();
});

describe("POST /v1/embeddings on the bundled model", () => {
  it("embeds texts as unit-length 128-wide floats, in OpenAI's shape, with CLIP token counts", async () => {
    const res = await client.embeddings.create({
      model: "any",
      input: [RED, BLUE],
      encoding_format: "float",
    });
    expect(res.object).toBe("list");
    expect(res.model).toBe(`${pipeline.models.id}-embeddings`);
    expect(res.data.map((d) => [d.object, d.index])).toEqual([
      ["embedding", 0],
      ["embedding", 1],
    ]);
    for (const d of res.data) {
      expect(Array.isArray(d.embedding)).toBe(true);
      expect(d.embedding).toHaveLength(128);
      expect(norm(d.embedding)).toBeCloseTo(1, 5);
    }
    expect(dot(res.data[0].embedding, res.data[1].embedding)).toBeLessThan(0.9999);
    // "a photo of a red square." is 7 tokens, plus CLIP's start and end tokens.
    expect(res.usage.prompt_tokens).toBe(18);
    expect(res.usage.total_tokens).toBe(res.usage.prompt_tokens);
  });

  it("base64 (explicit: a string of float32 LE; unset: the client asks for base64 and decodes it)", async () => {
    const floats = await client.embeddings.create({ model: "any", input: RED, encoding_format: "float" });
    const b64 = await client.embeddings.create({ model: "any", input: RED, encoding_format: "base64" });
    const raw = b64.data[0].embedding as unknown as string;
    expect(typeof raw).toBe("string");
    const bytes = Buffer.from(raw, "base64");
    expect(bytes.length).toBe(128 * 4);
    const decoded = Array.from({ length: 128 }, (_, i) => bytes.readFloatLE(i * 4));
    expect(decoded).toEqual(floats.data[0].embedding.map((x) => Math.fround(x)));
    const unset = await client.embeddings.create({ model: "any", input: RED });
    expect(unset.data[0].embedding).toHaveLength(128);
    expect(Array.from(unset.data[0].embedding)).toEqual(decoded);
    // A single string is one input.
    expect(unset.data).toHaveLength(1);
  });

  it("a region embedding is closer to its own description; texts and regions may be mixed", async () => {
    const res = await client.embeddings.create({
      model: "any",
      input: [
        ...imageInputs([
          { image: imageUrl, region: { mask: maskUrls[0] } },
          { image: imageUrl, region: { points: [redCentre] } },
          { image: imageUrl, region: { points: [blueCentre] } },
        ]),
        RED,
        BLUE,
      ],
      encoding_format: "float",
    });
    expect(res.data).toHaveLength(5);
    const [redMask, redPoint, bluePoint, red, blue] = res.data.map((d) => d.embedding);
    for (const e of [redMask, redPoint, bluePoint]) {
      expect(e).toHaveLength(128);
      expect(norm(e)).toBeCloseTo(1, 5);
    }
    expect(dot(redMask, red)).toBeGreaterThan(dot(redMask, blue));
    expect(dot(redPoint, red)).toBeGreaterThan(dot(redPoint, blue));
    expect(dot(bluePoint, blue)).toBeGreaterThan(dot(bluePoint, red));
    // Images count no tokens.
    expect(res.usage.prompt_tokens).toBe(18);
    const imagesOnly = await client.embeddings.create({
      model: "any",
      input: imageInputs([{ image: imageUrl, region: { mask: maskUrls[0] } }]),
    });
    expect(imagesOnly.usage.prompt_tokens).toBe(0);
    const again = Array.from(imagesOnly.data[0].embedding);
    again.forEach((x, i) => expect(x).toBeCloseTo(redMask[i], 6));
  });

  it("100 x region . text equals the classify route's score for that text", async () => {
    const res = await client.embeddings.create({
      model: "any",
      input: [...imageInputs([{ image: imageUrl, region: { mask: maskUrls[1] } }]), RED, BLUE],
      encoding_format: "float",
    });
    const [region, red, blue] = res.data.map((d) => d.embedding);
    const classify = await postJson(server, "/v1/regions/classify", {
      image: imageUrl,
      regions: [{ mask: maskUrls[1] }],
      labels: [RED, BLUE],
      template: "{}",
    });
    expect(classify.status).toBe(200);
    const ranked = (await json(classify)).regions[0].labels as Array<{ label: string; score: number }>;
    const score = (label: string) => ranked.find((l) => l.label === label)!.score;
    expect(Math.abs(100 * dot(region, red) - score(RED))).toBeLessThan(1e-3);
    expect(Math.abs(100 * dot(region, blue) - score(BLUE))).toBeLessThan(1e-3);
  });

  it("/v1/models lists the chat model first, then the embeddings model", async () => {
    const models = await client.models.list();
    expect(models.data.map((m) => m.id)).toEqual([pipeline.models.id, `${pipeline.models.id}-embeddings`]);
  });

  it("refuses other dimensions, empty inputs and token ids with 400s the client reports", async () => {
    const codeOf = async (body: Record<string, unknown>) => {
      const res = await postJson(server, "/v1/embeddings", { model: "any", ...body });
      expect(res.status).toBe(400);
      return (await json(res)).error as { code: string; message: string };
    };
    const dims = await codeOf({ input: RED, dimensions: 64 });
    expect(dims.code).toBe("invalid_request");
    expect(dims.message).toMatch(/not supported/);
    expect((await postJson(server, "/v1/embeddings", { input: RED, dimensions: 128 })).status).toBe(200);
    expect((await codeOf({ input: [] })).code).toBe("labels_invalid");
    expect((await codeOf({ input: "" })).code).toBe("labels_invalid");
    expect((await codeOf({ input: [RED, "  "] })).code).toBe("labels_invalid");
    expect((await codeOf({ input: [[1, 2, 3]] })).code).toBe("invalid_request");
    expect((await codeOf({ input: Array.from({ length: 2049 }, () => "x") })).code).toBe("too_many_inputs");
    expect((await codeOf({ input: "word ".repeat(80) })).code).toBe("label_too_long");
    expect((await codeOf({ input: [{ region: "whole" }] })).code).toBe("image_missing");
    expect((await codeOf({ input: RED, encoding_format: "int8" })).code).toBe("invalid_request");
    // Through the client: an APIError with status 400.
    await expect(client.embeddings.create({ model: "any", input: RED, dimensions: 3 })).rejects.toMatchObject(
      {
        status: 400,
      },
    );
  });
});

describe("POST /v1/embeddings without a text tower", () => {
  it("answers text_model_not_installed; empty input is checked first", async () => {
    const app = await injectServer(new ScriptedPipeline());
    try {
      const res = await app.inject({
        method: "POST",
        url: "/v1/embeddings",
        payload: { model: "x", input: [RED] },
      });
      expect(res.statusCode).toBe(400);
      expect(res.json().error.code).toBe("text_model_not_installed");
      const empty = await app.inject({ method: "POST", url: "/v1/embeddings", payload: { input: [] } });
      expect(empty.json().error.code).toBe("labels_invalid");
      const models = await app.inject({ url: "/v1/models" });
      expect(models.json().data.map((m: { id: string }) => m.id)).toEqual(["scripted"]);
      const doc = (await app.inject({ url: "/docs/json" })).json();
      expect(doc.paths["/v1/embeddings"].post.responses["200"]).toBeDefined();
    } finally {
      await app.close();
    }
  });
});
