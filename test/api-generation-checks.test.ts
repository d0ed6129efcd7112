/**
 * Generation fields the LLM would refuse are refused by the server before the request queues or
 * any model runs (docs/api.md: "Bad input is refused (4xx) before it queues"). Real pipeline on the
 * small test models, real HTTP on loopback.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  dataUrl,
  json,
  makeImage,
  realPipeline,
  startServer,
  type RunningServer,
  postJson,
} from "./api-support.js";
import type { LocalRegionVqaPipeline } from "../src/pipeline/index.js";

let pipeline: LocalRegionVqaPipeline;
let server: RunningServer;
let image: Buffer;

beforeAll(async () => {
  pipeline = await realPipeline();
  server = await startServer(pipeline, { limits: { maxTokens: 8 } });
  image = await makeImage(64, 48);
});
afterAll(async () => {
  await server?.close();
  await pipeline?.dispose();
});

const post = (path: string, body: unknown) => postJson(server, path, body);

/** Vision-cache lookups so far: every request that reaches the models makes at least one. */
const lookups = () => pipeline.stats().cache.hits + pipeline.stats().cache.misses;

describe("a negative seed", () => {
  // Bodies are built when each test runs: the image is made in beforeAll.
  const requests: Array<[string, () => Record<string, unknown>]> = [
    ["/v1/regions/caption", () => ({ image: dataUrl(image), box: [0, 0, 32, 48], max_tokens: 4 })],
    ["/v1/regions/ask", () => ({ image: dataUrl(image), question: "What is it?", max_tokens: 4 })],
    [
      "/v1/chat/completions",
      () => ({
        max_tokens: 4,
        messages: [
          {
            role: "user",
            content: [
              { type: "text", text: "What is it?" },
              { type: "image_url", image_url: { url: dataUrl(image) } },
            ],
          },
        ],
      }),
    ],
  ];

  for (const [path, body] of requests) {
    it(`is a 400 on ${path} before any model runs`, async () => {
      const before = lookups();
      const r = await post(path, { ...body(), seed: -1, temperature: 0.7 });
      expect(r.status).toBe(400);
      expect((await json(r)).error.code).toBe("invalid_request");
      expect(lookups()).toBe(before);
      // The same request with a valid seed is answered (the refusal was about the seed).
      const ok = await post(path, { ...body(), seed: 3, temperature: 0.7 });
      expect(ok.status).toBe(200);
      expect(lookups()).toBeGreaterThan(before);
    });
  }
});
