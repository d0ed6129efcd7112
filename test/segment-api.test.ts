/**
 * Point regions end to end on the bundled model (models/shapes: its miniature segmenter, Alpha-CLIP
 * and LLM), over a real HTTP server on loopback: POST /v1/regions/segment, points in ask / caption /
 * chat completions, the encode-once cache in /metrics, and every bad-input code.
 */
import sharp from "sharp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CACHE_METRIC_NAMES, ServerMetrics } from "../src/api/metrics.js";
import type { LocalRegionVqaPipeline } from "../src/pipeline/index.js";
import { decodeRle, type Mask } from "../src/vision/index.js";
import { encodePng, maskIou } from "../src/shapes/index.js";
import {
  blueCentre,
  bundledPipelineWithSegmenter,
  pointSceneImage,
  pointSceneMasks,
  redCentre,
} from "./support/point-scene.js";
import { json, postJson, startServer, type RunningServer } from "./support/server.js";
import { ScriptedPipeline } from "./support/scripted-pipeline.js";
import { injectServer } from "./support/server.js";

const rgb = pointSceneImage;
const masks = pointSceneMasks;

const iou = maskIou;

async function pngMask(dataUrl: string): Promise<Mask> {
  const png = Buffer.from(dataUrl.replace(/^data:image\/png;base64,/, ""), "base64");
  expect((await sharp(png).metadata()).channels).toBe(1);
  const { data, info } = await sharp(png).extractChannel(0).raw().toBuffer({ resolveWithObject: true });
  return { width: info.width, height: info.height, data: Uint8Array.from(data, (v) => (v === 255 ? 1 : 0)) };
}

let pipeline: LocalRegionVqaPipeline;
let server: RunningServer;
let metrics: ServerMetrics;
let imageB64: string;

beforeAll(async () => {
  metrics = new ServerMetrics({ collectProcessMetrics: false });
  pipeline = await bundledPipelineWithSegmenter({
    maxConversations: 4,
    onStage: (stage, ms) => metrics.observeStage(stage, ms / 1000),
    onCache: (hit, cache) => metrics.recordCache(CACHE_METRIC_NAMES[cache], hit),
  });
  server = await startServer(pipeline, {}, { metrics });
  imageB64 = Buffer.from(await encodePng(rgb)).toString("base64");
}, 120_000);

afterAll(async () => {
  await server?.close();
  await pipeline?.dispose();
});

describe("POST /v1/regions/segment on the bundled segmenter", () => {
  it("turns one click into the object's mask (PNG and RLE), encoding the image once for every click", async () => {
    const first = await postJson(server, "/v1/regions/segment", { image: imageB64, points: [redCentre] });
    expect(first.status).toBe(200);
    const body = await json(first);
    expect([body.width, body.height]).toEqual([240, 180]);
    const mask = await pngMask(body.mask.png);
    expect([mask.width, mask.height]).toEqual([240, 180]);
    expect(iou(mask, masks[0])).toBeGreaterThan(0.9);
    expect(decodeRle(body.mask.rle, 240, 180).data).toEqual(mask.data);
    expect(body.area).toBe(mask.data.reduce((a: number, b: number) => a + b, 0));
    expect(body.candidates).toHaveLength(3);
    expect(body.candidates[body.index].score).toBe(body.score);
    expect(body.timings.embeddings_cached).toBe(false);

    // A further click on the same image (the blue circle) only runs the prompt decoder.
    const second = await json(
      await postJson(server, "/v1/regions/segment", { image: imageB64, points: [blueCentre] }),
    );
    expect(second.timings.embeddings_cached).toBe(true);
    expect(second.timings.encode_ms).toBe(0);
    expect(iou(await pngMask(second.mask.png), masks[1])).toBeGreaterThan(0.9);

    const text = await (await fetch(`${server.url}/metrics`)).text();
    expect(text).toMatch(/region_vqa_cache_lookups_total\{cache="segmenter_embeddings",result="miss"\} 1\b/);
    expect(text).toMatch(/region_vqa_cache_lookups_total\{cache="segmenter_embeddings",result="hit"\} 1\b/);
    const used = /region_vqa_cache_bytes\{cache="segmenter_embeddings",kind="used"\} (\d+)/.exec(text);
    expect(Number(used?.[1])).toBeGreaterThan(0);
  });

  it("refines a box, and an exclude click takes an object out", async () => {
    const box = await json(
      await postJson(server, "/v1/regions/segment", { image: imageB64, box: [145, 55, 219, 129] }),
    );
    expect(iou(await pngMask(box.mask.png), masks[1])).toBeGreaterThan(0.9);
    const form = new FormData();
    form.set("image", new Blob([Buffer.from(imageB64, "base64")], { type: "image/png" }), "s.png");
    form.set("points", JSON.stringify([redCentre, [...blueCentre, 0]]));
    const res = await fetch(`${server.url}/v1/regions/segment`, { method: "POST", body: form });
    expect(res.status).toBe(200);
    const both = await json(res);
    expect(iou(await pngMask(both.mask.png), masks[0])).toBeGreaterThan(0.9);
  });
});

describe("points as a region in the question routes", () => {
  it("ask: a click on the red square answers red (JSON and multipart)", async () => {
    const res = await postJson(server, "/v1/regions/ask", {
      image: imageB64,
      points: [redCentre],
      question: "What colour is the highlighted region?",
      max_tokens: 16,
    });
    expect(res.status).toBe(200);
    expect((await json(res)).answer).toMatch(/\bred\b/i);
    const form = new FormData();
    form.set("image", new Blob([Buffer.from(imageB64, "base64")], { type: "image/png" }), "s.png");
    form.set("points", JSON.stringify([blueCentre]));
    form.set("question", "What shape is the highlighted region?");
    const multipart = await fetch(`${server.url}/v1/regions/ask`, { method: "POST", body: form });
    expect(multipart.status).toBe(200);
    expect((await json(multipart)).answer).toMatch(/\bcircle\b/i);
  });

  it("caption and the chat completions region extension accept points", async () => {
    const captionRes = await postJson(server, "/v1/regions/caption", {
      image: imageB64,
      regions: [{ points: [redCentre] }, { points: [[182, 70]], box: [145, 55, 219, 129] }],
      max_tokens: 16,
    });
    const caption = await json(captionRes);
    expect(caption.error).toBeUndefined();
    expect(caption.captions[0].caption).toMatch(/red square/i);
    expect(caption.captions[1].caption).toMatch(/blue circle/i);
    const chat = await json(
      await postJson(server, "/v1/chat/completions", {
        model: "shapes",
        max_tokens: 16,
        region: { points: [blueCentre] },
        messages: [
          {
            role: "user",
            content: [
              { type: "image_url", image_url: { url: `data:image/png;base64,${imageB64}` } },
              { type: "text", text: "What colour is the highlighted region?" },
            ],
          },
        ],
      }),
    );
    expect(chat.choices[0].message.content).toMatch(/\bblue\b/i);
  });
});

/** Stands for a number JSON.parse reads as Infinity (1e400) in the request text. */
const NON_FINITE = 987654321;

describe("bad point input is a 4xx with its own code, and the server carries on", () => {
  const cases: Array<[string, Record<string, unknown>, number, string]> = [
    ["a point outside the image", { points: [[240.5, 10]] }, 400, "point_outside_image"],
    ["a negative coordinate", { points: [[-1, 10]] }, 400, "point_outside_image"],
    ["a non-finite number", { points: [[NON_FINITE, 10]] }, 400, "point_invalid"],
    ["text for a number", { points: [["10", 10]] }, 400, "point_invalid"],
    ["a label other than 0 or 1", { points: [[10, 10, 2]] }, 400, "point_invalid"],
    ["33 points", { points: Array.from({ length: 33 }, () => [10, 10]) }, 400, "too_many_points"],
    ["no points and no box", {}, 400, "point_invalid"],
    ["a click on the background", { points: [[5, 5]] }, 400, "segment_empty"],
  ];
  for (const [what, fields, status, code] of cases) {
    it(`${what} -> ${status} ${code}`, async () => {
      // JSON has no Infinity: the raw text carries 1e400, which JSON.parse reads as Infinity.
      const text = JSON.stringify({ image: imageB64, ...fields }).replace(String(NON_FINITE), "1e400");
      const res = await fetch(`${server.url}/v1/regions/segment`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: text,
      });
      expect(res.status).toBe(status);
      expect((await json(res)).error.code).toBe(code);
    });
  }

  it("the same codes in a question route, then a good request succeeds and nothing was a 5xx", async () => {
    const bad = await postJson(server, "/v1/regions/ask", {
      image: imageB64,
      points: [[10, 500]],
      question: "What colour is it?",
    });
    expect(bad.status).toBe(400);
    expect((await json(bad)).error).toMatchObject({
      code: "point_outside_image",
      details: { index: 0, y: 500 },
    });
    const good = await postJson(server, "/v1/regions/segment", { image: imageB64, points: [redCentre] });
    expect(good.status).toBe(200);
    const text = await (await fetch(`${server.url}/metrics`)).text();
    expect(text).not.toMatch(/region_vqa_http_requests_total\{[^}]*status="5\d\d"/);
  });

  it("a server without a segmenter answers segmenter_not_installed, naming the pull command", async () => {
    const app = await injectServer(new ScriptedPipeline());
    try {
      for (const [url, extra] of [
        ["/v1/regions/segment", {}],
        ["/v1/regions/ask", { question: "What is it?" }],
      ] as const) {
        const res = await app.inject({
          method: "POST",
          url,
          payload: { image: imageB64, points: [redCentre], ...extra },
        });
        expect(res.statusCode).toBe(400);
        const error = res.json().error;
        expect(error.code).toBe("segmenter_not_installed");
        expect(error.message).toContain("region-vqa pull sam2.1-tiny");
      }
    } finally {
      await app.close();
    }
  });
});
