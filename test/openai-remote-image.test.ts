/**
 * Allow-listed remote images for /v1/chat/completions, fetched from a real HTTP server on loopback:
 * a normal fetch is answered, and a remote server that stalls cannot hold a request past its own
 * deadline (the fetch stops with the request, not only with the fetch's own, longer time limit).
 */
import http from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { LocalRegionVqaPipeline } from "../src/pipeline/index.js";
import {
  json,
  makeImage,
  realPipeline,
  startServer,
  userMessageWithImage,
  type RunningServer,
} from "./support/server.js";

let pipeline: LocalRegionVqaPipeline;
let server: RunningServer;
let remote: http.Server;
let remoteUrl: string;
let stalledClosedAt: number | undefined;

beforeAll(async () => {
  const png = await makeImage(64, 48);
  remote = http.createServer((req, res) => {
    if (req.url === "/image.png") {
      res.writeHead(200, { "content-type": "image/png" }).end(png);
      return;
    }
    // Headers, a few bytes, then nothing: a stalled upstream.
    res.writeHead(200, { "content-type": "image/png" });
    res.write(png.subarray(0, 16));
    req.socket.once("close", () => (stalledClosedAt = performance.now()));
  });
  await new Promise<void>((r) => remote.listen(0, "127.0.0.1", r));
  remoteUrl = `http://127.0.0.1:${(remote.address() as AddressInfo).port}/`;
  pipeline = await realPipeline();
  server = await startServer(pipeline, {
    limits: { maxTokens: 4, requestTimeoutMs: 1_000 },
    remoteImages: { allow: [remoteUrl], timeoutMs: 20_000 },
  });
});
afterAll(async () => {
  await server?.close();
  await pipeline?.dispose();
  remote?.closeAllConnections();
  await new Promise((r) => remote?.close(r));
});

const chat = (url: string) =>
  fetch(`${server.url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      max_tokens: 4,
      messages: [userMessageWithImage(url, "What is it?")],
    }),
  });

describe("remote image_url", () => {
  it("fetches an allow-listed image", async () => {
    const r = await chat(`${remoteUrl}image.png`);
    expect(r.status).toBe(200);
    expect((await json(r)).choices[0].message.role).toBe("assistant");
  });

  it("stops fetching a stalled image at the request's deadline (408), not the fetch limit", async () => {
    const t0 = performance.now();
    const r = await chat(`${remoteUrl}stalled.png`);
    const elapsed = performance.now() - t0;
    expect(r.status).toBe(408);
    expect((await json(r)).error.code).toBe("timeout");
    // The deadline is 1 s, the fetch limit 20 s.
    expect(elapsed).toBeLessThan(5_000);
    await expect.poll(() => stalledClosedAt, { timeout: 2_000 }).toBeDefined();
    expect(stalledClosedAt! - t0).toBeLessThan(5_000);
  }, 30_000);
});
