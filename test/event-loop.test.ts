/**
 * The event loop stays free while the CPU work around the models runs, on the real server over the
 * real pipeline (tiny real models), on loopback:
 * - while a 12-megapixel photo is decoded, hashed, masked and preprocessed, /healthz is answered in
 *   the middle of that work (observed while an imaging kernel is running); with the TypeScript
 *   kernels, which run on the event loop, no answer can arrive then (the control);
 * - a burst of 40 asks (streamed and not, more than the server serves and queues) leaves no lease
 *   behind and prints no MaxListenersExceededWarning (a listener per request on one shared signal
 *   used to pile up past Node's limit of 10).
 * No timing is asserted: only what happens while what else is in progress.
 */
import sharp from "sharp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { pipelineRequests } from "../src/api/index.js";
import { ImagingPool } from "../src/common/imaging/pool.js";
import type { LocalRegionVqaPipeline } from "../src/pipeline/index.js";
import { dataUrl, makeImage, realPipeline, startServer, type RunningServer } from "./support/server.js";
import { seededImage } from "./support/seeded-image.js";

async function photo(): Promise<Buffer> {
  const { width, height, data } = seededImage(4032, 3024, 7);
  return sharp(data, { raw: { width, height, channels: 3 } })
    .jpeg({ quality: 85 })
    .toBuffer();
}

/**
 * Sends one ask with a 12 MP photo and polls /healthz until the ask has answered; returns how many
 * health answers arrived while an imaging kernel of `pool` was running.
 */
async function healthDuringKernels(server: RunningServer, pool: ImagingPool, jpeg: Buffer): Promise<number> {
  let done = false;
  let duringKernels = 0;
  let answers = 0;
  const ask = fetch(`${server.url}/v1/regions/ask`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      image: `data:image/jpeg;base64,${jpeg.toString("base64")}`,
      polygon: [100, 100, 3900, 200, 2000, 2900],
      question: "What is it?",
      max_tokens: 2,
    }),
  }).then(async (r) => {
    expect(r.status, await r.clone().text()).toBe(200);
    await r.text();
    done = true;
  });
  while (!done) {
    const r = await fetch(`${server.url}/healthz`);
    await r.text();
    expect(r.status).toBe(200);
    answers++;
    if (pool.stats().kernels > 0) duringKernels++;
  }
  await ask;
  expect(answers).toBeGreaterThan(0);
  return duringKernels;
}

describe("the event loop during a 12-megapixel request", () => {
  let jpeg: Buffer;
  beforeAll(async () => {
    jpeg = await photo();
  });

  for (const backend of ["native", "typescript"] as const) {
    it(`/healthz is answered while the ${backend} kernels work: ${backend === "native" ? "yes" : "never (control)"}`, async () => {
      const pool = new ImagingPool({ backend, threads: 1, concurrency: 1 });
      const previous = ImagingPool.setShared(pool);
      let pipeline: LocalRegionVqaPipeline | undefined;
      let server: RunningServer | undefined;
      try {
        pipeline = await realPipeline();
        server = await startServer(pipeline);
        const during = await healthDuringKernels(server, pool, jpeg);
        if (backend === "native") expect(during).toBeGreaterThan(0);
        else expect(during).toBe(0);
        expect(pool.stats().completed).toBeGreaterThan(5); // decode, hashes, masks, resizes, planes
      } finally {
        await server?.close();
        await pipeline?.dispose();
        ImagingPool.setShared(previous);
      }
    });
  }
});

describe("a burst of 40 asks", () => {
  let pipeline: LocalRegionVqaPipeline;
  let server: RunningServer;
  beforeAll(async () => {
    pipeline = await realPipeline();
    server = await startServer(pipeline, { limits: { maxConcurrentRequests: 4, maxQueue: 16 } });
  });
  afterAll(async () => {
    await server?.close();
    await pipeline?.dispose();
  });

  it("answers 200 or 503 only, leaves no lease behind and prints no listener warning", async () => {
    const warnings: Error[] = [];
    const onWarning = (w: Error) => warnings.push(w);
    process.on("warning", onWarning);
    try {
      const image = dataUrl(await makeImage(64, 48));
      const statuses = await Promise.all(
        Array.from({ length: 40 }, async (_, n) => {
          const r = await fetch(`${server.url}/v1/regions/ask`, {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: JSON.stringify({
              image,
              box: [4, 4, 30, 30],
              question: `Question ${n}?`,
              max_tokens: 4,
              stream: n % 2 === 0,
            }),
          });
          await r.text();
          return r.status;
        }),
      );
      expect(new Set(statuses)).toEqual(new Set([200, 503]));
      // 4 served + 16 queued at once: the other 20 are refused.
      expect(statuses.filter((s) => s === 200).length).toBeGreaterThanOrEqual(20);
      // Warnings are emitted on the next tick.
      await new Promise((r) => setImmediate(r));
      expect(warnings.filter((w) => w.name === "MaxListenersExceededWarning")).toEqual([]);
      expect(pipelineRequests(server.app)).toEqual({ active: 0, waiting: 0, live: 0 });
    } finally {
      process.off("warning", onWarning);
    }
  });
});
