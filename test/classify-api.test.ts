/**
 * POST /v1/regions/classify end to end on the bundled model (models/shapes: Alpha-CLIP, its CLIP text
 * tower and the miniature segmenter) over a real HTTP server on loopback: the point-scene picture's two
 * objects ranked among the 24 colour-shape labels (masks, points, multipart), the text-feature cache,
 * and every bad-input code.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ServerMetrics } from "../src/api/metrics.js";
import type { LocalRegionVqaPipeline } from "../src/pipeline/index.js";
import { COLOUR_NAMES, SHAPES, encodePng } from "../src/shapes/index.js";
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

const LABELS = COLOUR_NAMES.flatMap((c) => SHAPES.map((s) => `${c} ${s}`));
const ROUTE = "/v1/regions/classify";

let pipeline: LocalRegionVqaPipeline;
let server: RunningServer;
let imagePng: Buffer;
let imageB64: string;
let maskPngs: Buffer[];

const dataUrl = (png: Buffer) => `data:image/png;base64,${png.toString("base64")}`;
const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);

interface Ranked {
  label?: string;
  index?: number;
  score: number;
  probability: number;
}

/** Every list is best first, its probabilities sum to 1 and lie in [0, 1]. */
function expectRanking(list: Ranked[], length: number): void {
  expect(list).toHaveLength(length);
  for (let i = 1; i < list.length; i++) expect(list[i - 1].score).toBeGreaterThanOrEqual(list[i].score);
  for (const r of list) {
    expect(Number.isFinite(r.score)).toBe(true);
    expect(r.probability).toBeGreaterThanOrEqual(0);
    expect(r.probability).toBeLessThanOrEqual(1);
  }
  expect(sum(list.map((r) => r.probability))).toBeCloseTo(1, 5);
}

beforeAll(async () => {
  const metrics = new ServerMetrics({ collectProcessMetrics: false });
  pipeline = await bundledPipelineWithSegmenter({
    maxConversations: 2,
    onStage: (stage, ms) => metrics.observeStage(stage, ms / 1000),
  });
  expect(pipeline.models.text).toMatch(/models\/shapes\/text$/);
  server = await startServer(pipeline, {}, { metrics });
  imagePng = Buffer.from(await encodePng(pointSceneImage));
  imageB64 = imagePng.toString("base64");
  maskPngs = await Promise.all(pointSceneMasks.map(async (m) => Buffer.from(await encodeMaskPng(m))));
}, 120_000);

afterAll(async () => {
  await server?.close();
  await pipeline?.dispose();
});

describe("POST /v1/regions/classify on the bundled model", () => {
  it("ranks the 24 colour-shape labels for each object mask, both ways; repeated labels are cached", async () => {
    const request = {
      image: imageB64,
      regions: maskPngs.map((png) => ({ mask: dataUrl(png) })),
      labels: LABELS,
    };
    const res = await postJson(server, ROUTE, request);
    expect(res.status).toBe(200);
    const body = await json(res);
    expect(body.model).toBe(pipeline.models.id);
    expect(body.templates).toEqual(["a photo of a {}."]);

    expect(body.regions.map((r: { index: number }) => r.index)).toEqual([0, 1]);
    for (const r of body.regions) expectRanking(r.labels, 24);
    expect(body.regions[0].labels[0].label).toBe("red square");
    expect(body.regions[1].labels[0].label).toBe("blue circle");
    expect(new Set(body.regions[0].labels.map((l: Ranked) => l.label))).toEqual(new Set(LABELS));

    expect(body.labels.map((l: { label: string }) => l.label)).toEqual(LABELS);
    for (const l of body.labels) expectRanking(l.regions, 2);
    const byLabel = (label: string) => body.labels.find((l: { label: string }) => l.label === label);
    expect(byLabel("blue circle").regions[0].index).toBe(1);
    expect(byLabel("red square").regions[0].index).toBe(0);
    // Both rankings come from the same scores.
    const blueCircleOn1 = body.regions[1].labels.find((l: Ranked) => l.label === "blue circle").score;
    expect(byLabel("blue circle").regions[0].score).toBeCloseTo(blueCircleOn1, 4);

    expect(body.usage.text_encoded).toBeGreaterThan(0);
    expect(body.usage.text_encoded + body.usage.text_cached).toBe(24);
    expect(body.timings.decode_ms).toBeGreaterThan(0);
    expect(body.timings.classify_ms).toBeGreaterThan(0);

    // The same request again: every label text comes from the cache, the answer is the same.
    const again = await json(await postJson(server, ROUTE, request));
    expect(again.usage).toEqual({ text_encoded: 0, text_cached: 24 });
    expect(again.regions[0].labels[0]).toEqual(body.regions[0].labels[0]);

    const text = await (await fetch(`${server.url}/metrics`)).text();
    expect(text).toMatch(/region_vqa_cache_lookups_total\{cache="text_features",result="hit"\} 24\b/);
    expect(text).toMatch(/region_vqa_pipeline_stage_duration_seconds_count\{stage="classify"\} [1-9]/);
    const used = /region_vqa_cache_bytes\{cache="text_features",kind="used"\} (\d+)/.exec(text);
    expect(Number(used?.[1])).toBeGreaterThan(0);
  });

  it("clicks (points) as regions and several templates averaged", async () => {
    const res = await postJson(server, ROUTE, {
      image: imageB64,
      regions: [{ points: [redCentre] }, { points: [blueCentre] }],
      labels: LABELS,
      templates: ["a photo of a {}.", "a {}."],
    });
    expect(res.status).toBe(200);
    const body = await json(res);
    expect(body.templates).toEqual(["a photo of a {}.", "a {}."]);
    expect(body.regions[0].labels[0].label).toBe("red square");
    expect(body.regions[1].labels[0].label).toBe("blue circle");
    // "a photo of a {}." texts were cached by the first test; only the "a {}." ones are new.
    expect(body.usage).toEqual({ text_encoded: 24, text_cached: 24 });
  });

  it("the whole image as the region: one region, every label ranked", async () => {
    const res = await postJson(server, ROUTE, { image: imageB64, labels: LABELS });
    expect(res.status).toBe(200);
    const body = await json(res);
    expect(body.regions).toHaveLength(1);
    expectRanking(body.regions[0].labels, 24);
    expect(body.labels).toHaveLength(24);
    for (const l of body.labels) {
      expect(l.regions).toEqual([{ index: 0, score: expect.any(Number), probability: 1 }]);
    }
  });

  it("multipart: the image and two mask files, labels repeated or as JSON text, a template", async () => {
    const form = () => {
      const f = new FormData();
      f.set("image", new Blob([imagePng], { type: "image/png" }), "scene.png");
      for (const [i, png] of maskPngs.entries()) {
        f.append("mask", new Blob([png], { type: "image/png" }), `mask${i}.png`);
      }
      f.set("template", "a photo of a {}.");
      return f;
    };
    const repeated = form();
    for (const label of LABELS) repeated.append("labels", label);
    const res = await fetch(`${server.url}${ROUTE}`, { method: "POST", body: repeated });
    expect(res.status).toBe(200);
    const body = await json(res);
    expect(body.regions[0].labels[0].label).toBe("red square");
    expect(body.regions[1].labels[0].label).toBe("blue circle");
    expect(body.labels).toHaveLength(24);

    const asJson = form();
    asJson.set("labels", JSON.stringify(["blue circle", "red square"]));
    const res2 = await fetch(`${server.url}${ROUTE}`, { method: "POST", body: asJson });
    expect(res2.status).toBe(200);
    const two = await json(res2);
    expect(two.labels.map((l: { label: string }) => l.label)).toEqual(["blue circle", "red square"]);
    expect(two.labels[0].regions[0].index).toBe(1);
    expect(two.labels[1].regions[0].index).toBe(0);
    expect(two.usage).toEqual({ text_encoded: 0, text_cached: 2 });
  });
});

describe("bad labels and templates are a 400 with their own code", () => {
  const long = Array.from({ length: 80 }, () => "red").join(" ");
  const cases: Array<[string, Record<string, unknown>, string]> = [
    ["no labels", {}, "labels_invalid"],
    ["an empty list", { labels: [] }, "labels_invalid"],
    ["an empty label", { labels: ["red square", "  "] }, "labels_invalid"],
    ["a label that is not text", { labels: ["red square", 3] }, "labels_invalid"],
    ["1001 labels", { labels: Array.from({ length: 1001 }, (_, i) => `label ${i}`) }, "too_many_labels"],
    ["a template without {}", { labels: LABELS, template: "a photo of a thing." }, "labels_invalid"],
    ["templates with one lacking {}", { labels: LABELS, templates: ["a {}.", "a thing."] }, "labels_invalid"],
    ["template and templates", { labels: LABELS, template: "a {}.", templates: ["a {}."] }, "labels_invalid"],
    ["a label longer than 77 tokens", { labels: ["red square", long] }, "label_too_long"],
  ];
  for (const [what, fields, code] of cases) {
    it(`${what} -> 400 ${code}`, async () => {
      const res = await postJson(server, ROUTE, { image: imageB64, ...fields });
      expect(res.status).toBe(400);
      expect((await json(res)).error.code).toBe(code);
    });
  }

  it("an over-long label is refused, not truncated, and the server carries on", async () => {
    const res = await postJson(server, ROUTE, {
      image: imageB64,
      labels: ["red square", `${Array.from({ length: 76 }, () => "blue").join(" ")} circle`],
    });
    expect(res.status).toBe(400);
    const error = (await json(res)).error;
    expect(error.code).toBe("label_too_long");
    expect(error.message).toMatch(/at most 77/);
    // The second label, counted with the template's tokens and CLIP's start and end tokens.
    expect(error.details).toMatchObject({ index: 1, maxTokens: 77 });
    const ok = await postJson(server, ROUTE, { image: imageB64, labels: ["red square"] });
    expect(ok.status).toBe(200);
    const text = await (await fetch(`${server.url}/metrics`)).text();
    expect(text).not.toMatch(/region_vqa_http_requests_total\{[^}]*status="5\d\d"/);
  });

  it("a server without a text tower answers text_model_not_installed", async () => {
    const app = await injectServer(new ScriptedPipeline());
    try {
      const res = await app.inject({
        method: "POST",
        url: ROUTE,
        payload: { image: imageB64, labels: LABELS },
      });
      expect(res.statusCode).toBe(400);
      expect(res.json().error.code).toBe("text_model_not_installed");
      // Labels are checked first.
      const bad = await app.inject({ method: "POST", url: ROUTE, payload: { image: imageB64, labels: [] } });
      expect(bad.json().error.code).toBe("labels_invalid");
    } finally {
      await app.close();
    }
  });

  it("repeated multipart mask files are accepted by the caption route too (one region each)", async () => {
    const scripted = new ScriptedPipeline();
    const app = await injectServer(scripted);
    try {
      const form = new FormData();
      form.set("image", new Blob([imagePng], { type: "image/png" }), "scene.png");
      for (const png of maskPngs) form.append("mask", new Blob([png], { type: "image/png" }), "m.png");
      const request = new Request("http://localhost/v1/regions/caption", { method: "POST", body: form });
      const res = await app.inject({
        method: "POST",
        url: "/v1/regions/caption",
        headers: Object.fromEntries(request.headers),
        payload: Buffer.from(await request.arrayBuffer()),
      });
      expect(res.statusCode).toBe(200);
      expect(res.json().captions).toHaveLength(2);
    } finally {
      await app.close();
    }
  });

  it("/readyz, /v1/models and the OpenAPI document still answer", async () => {
    const ready = await fetch(`${server.url}/readyz`);
    expect(ready.status).toBe(200);
    const models = await json(await fetch(`${server.url}/v1/models`));
    expect(models.data[0].id).toBe(pipeline.models.id);
    const doc = await json(await fetch(`${server.url}/docs/json`));
    const classify = doc.paths["/v1/regions/classify"].post;
    expect(classify.responses["200"]).toBeDefined();
    const multipart = classify.requestBody.content["multipart/form-data"].schema.properties;
    expect(JSON.stringify(multipart.mask)).not.toContain("x-binary-file");
    expect(multipart.mask.anyOf[0]).toMatchObject({ type: "string", format: "binary" });
  });
});
