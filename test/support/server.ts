/**
 * Shared pieces of the server tests: small test images made with sharp, a real server on loopback,
 * an SSE reader, and the pipeline the happy paths run on.
 */
import sharp from "sharp";
import type { FastifyInstance } from "fastify";
import { buildServer, ServerMetrics, type BuildServerOptions } from "../../src/api/index.js";
import { loadConfig, type ServerConfigInput } from "../../src/config.js";
import { createPipeline, type LocalRegionVqaPipeline } from "../../src/pipeline/index.js";
import { tinyModels } from "./tiny-models.js";

/** A W x H PNG: left half red, right half blue (optionally with an alpha channel: right half opaque). */
export async function makeImage(width = 64, height = 48, withAlpha = false): Promise<Buffer> {
  const channels = withAlpha ? 4 : 3;
  const data = Buffer.alloc(width * height * channels);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = (y * width + x) * channels;
      const right = x >= width / 2;
      data[i] = right ? 0 : 220;
      data[i + 1] = 30;
      data[i + 2] = right ? 220 : 0;
      if (withAlpha) data[i + 3] = right ? 255 : 0;
    }
  }
  return sharp(data, { raw: { width, height, channels } }).png().toBuffer();
}

/** A W x H mask PNG, white inside the box [x1, y1, x2, y2). */
export async function makeMask(
  width: number,
  height: number,
  box: [number, number, number, number],
): Promise<Buffer> {
  const data = Buffer.alloc(width * height);
  for (let y = box[1]; y < box[3]; y++) data.fill(255, y * width + box[0], y * width + box[2]);
  return sharp(data, { raw: { width, height, channels: 1 } })
    .png()
    .toBuffer();
}

export const dataUrl = (png: Buffer) => `data:image/png;base64,${png.toString("base64")}`;

/** An OpenAI-style user message: a question and an image (data URL or remote URL). */
export const userMessageWithImage = (url: string, text: string) => ({
  role: "user" as const,
  content: [
    { type: "text" as const, text },
    { type: "image_url" as const, image_url: { url } },
  ],
});

export interface RunningServer {
  app: FastifyInstance;
  url: string;
  close(): Promise<void>;
}

/** The app over `pipeline` with `config` on top of the defaults (no environment), quiet, not owning it. */
function testApp(
  pipeline: BuildServerOptions["pipeline"],
  config: ServerConfigInput,
  extra: Partial<BuildServerOptions>,
): Promise<FastifyInstance> {
  return buildServer({
    pipeline,
    config: loadConfig({ env: {}, flags: { logLevel: "silent", ...config } }),
    disposePipelineOnClose: false,
    ...extra,
  });
}

export async function startServer(
  pipeline: BuildServerOptions["pipeline"],
  config: ServerConfigInput = {},
  extra: Partial<BuildServerOptions> = {},
): Promise<RunningServer> {
  const app = await testApp(pipeline, config, extra);
  const address = await app.listen({ host: "127.0.0.1", port: 0 });
  return { app, url: address, close: () => app.close() };
}

/**
 * A server over `pipeline` that never binds a socket: requests go through `app.inject()` (Fastify's
 * in-process testing). For the API's own logic; loopback suites use `startServer`.
 */
export async function injectServer(
  pipeline: BuildServerOptions["pipeline"],
  config: ServerConfigInput = {},
  extra: Partial<BuildServerOptions> = {},
): Promise<FastifyInstance> {
  const app = await testApp(pipeline, config, extra);
  await app.ready();
  return app;
}

export interface SseEvent {
  event?: string;
  data: string;
}

/** Reads a whole text/event-stream response into its events. */
export async function readSse(response: Response): Promise<SseEvent[]> {
  return parseSse(await response.text());
}

/** A text/event-stream body -> its events. */
export function parseSse(text: string): SseEvent[] {
  const events: SseEvent[] = [];
  for (const block of text.split("\n\n")) {
    if (block.trim() === "") continue;
    const event: SseEvent = { data: "" };
    for (const line of block.split("\n")) {
      if (line.startsWith("event: ")) event.event = line.slice(7);
      else if (line.startsWith("data: ")) event.data += line.slice(6);
    }
    events.push(event);
  }
  return events;
}

/**
 * The real pipeline on the small real test models (tiny Alpha-CLIP from the golden checkpoint, the
 * golden tiny projector, a random 96-wide LLaMA): answers are gibberish, so tests assert plumbing and
 * equivalences (same region stated two ways -> same greedy answer), not content.
 */
export async function realPipeline(metrics?: ServerMetrics): Promise<LocalRegionVqaPipeline> {
  const models = await tinyModels();
  return createPipeline({
    onStage: metrics ? (stage, ms) => metrics.observeStage(stage, ms / 1000) : undefined,
    onCache: metrics ? (hit) => metrics.recordCache("vision_embeddings", hit) : undefined,
    ...models,
    modelId: "tiny-test",
    device: "cpu",
    gpu: false,
    visionThreads: 1,
    llmThreads: 1,
    contextSize: 1024,
    maxConversations: 8,
  });
}

/** POST `body` as JSON to `path` on a running server. */
export function postJson(server: RunningServer, path: string, body: unknown): Promise<Response> {
  return fetch(`${server.url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
}

/** A response's JSON body, loosely typed for assertions. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function json(response: Response): Promise<any> {
  return response.json();
}
