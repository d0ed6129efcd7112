/**
 * `npm run bench:imaging`: the CPU work around the models (docs/benchmarks.md, "Imaging and the event
 * loop"). Every row is measured in this run, beside its baseline from the same run:
 *   - preprocess: LLaVA's image + one mask and SAM's 1024 frame of seeded 640x480, 1024x768 and
 *     4032x3024 images: the native kernels (1 and 2 threads) vs the TypeScript specifications vs
 *     Pillow (run through /usr/bin/python3 when Debian's python3-pil is there, else said so);
 *   - eventloop: `region-vqa serve` on the bundled model while 8 clients upload 12 MP JPEG photos
 *     (multipart asks, a new box each so nothing is cached): the server's event-loop delay (its own
 *     /metrics, Node's monitorEventLoopDelay) and /healthz latency polled every 10 ms, with the native
 *     kernels and with REGION_VQA_IMAGING=typescript (the old path: the kernels on the event loop);
 *   - ceiling: the real server and pipeline over BENCHMARK-ONLY instant engines of the real shapes
 *     (bench/instant-engines.ts), `ask` with a new 640x480 JPEG each at 1/4/16 clients: the
 *     throughput a GPU host could reach if the models cost nothing, and where the server's time goes;
 *   - batching: encoder runs per request and req/s at 16 clients with cross-request batching on and
 *     off (bundled model, HTTP), and 8 concurrent regions through a full-size random ViT-L/14@336 on
 *     the CPU (the encoder alone).
 * The load generator runs in a child process (bench/load-child.ts), so it does not load the event
 * loop being measured. The eventloop part runs the built CLI (dist/: `npm run build` first).
 *
 *   npm run bench:imaging -- [--parts preprocess,eventloop,ceiling,batching] [--repeats 5]
 *     [--seconds 20] [--threads 2]
 */
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import sharp from "sharp";
import { buildServer } from "../src/api/index.js";
import { ImagingPool } from "../src/common/imaging/pool.js";
import { loadConfig } from "../src/config.js";
import { EncodeBatcher } from "../src/pipeline/encode-batcher.js";
import { createPipeline, LocalRegionVqaPipeline } from "../src/pipeline/index.js";
import { resolveModelOptions } from "../src/models/index.js";
import { SamProcessor } from "../src/segmenter/processor.js";
import type { SegmenterConfig } from "../src/segmenter/types.js";
import { bytesFromField, decodeRequestImage } from "../src/api/input.js";
import { sha256Hex } from "../src/common/imaging/kernels.js";
import {
  AlphaClipEncoder,
  LlavaImageProcessor,
  regionToMaskAsync,
  type RgbImage,
} from "../src/vision/index.js";
import { seededImage, seededMask } from "../test/support/seeded-image.js";
import { instantEncoder, instantLlm } from "./instant-engines.js";
import { machineInfo, median, quantile, round } from "./stats.js";
import { fullSizeVisionModel } from "./synthetic-models.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(here, "..");
const PARTS = ["preprocess", "eventloop", "ceiling", "batching"] as const;
type Part = (typeof PARTS)[number];

const { values } = parseArgs({
  options: {
    parts: { type: "string", default: PARTS.join(",") },
    repeats: { type: "string", default: "5" },
    seconds: { type: "string", default: "20" },
    threads: { type: "string", default: String(Math.min(2, os.availableParallelism())) },
  },
  strict: true,
});
const parts = values.parts!.split(",") as Part[];
for (const p of parts) if (!PARTS.includes(p)) throw new Error(`--parts: unknown part ${p}`);
const repeats = Number(values.repeats);
const seconds = Number(values.seconds);
const threads = Number(values.threads);
const log = (m: string) => void process.stderr.write(`bench:imaging: ${m}\n`);
const tmp = mkdtempSync(path.join(os.tmpdir(), "rvqa-imaging-"));
const lines: string[] = [];
const out = (line = "") => lines.push(line);
const ms = (v: number) => (Number.isFinite(v) ? v.toFixed(1) : "–");
const ratio = (a: number, b: number) => (Number.isFinite(a / b) ? `${(a / b).toFixed(2)}x` : "–");

async function timeMs(fn: () => Promise<unknown>, n: number): Promise<number> {
  await fn(); // warm: lookup tables, the addon, page faults
  const times: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await fn();
    times.push(performance.now() - t0);
  }
  return median(times);
}

function jpegOf(image: RgbImage, quality: number): Promise<Buffer> {
  const { width, height, data } = image;
  return sharp(data, { raw: { width, height, channels: 3 } })
    .jpeg({ quality })
    .toBuffer();
}

/** `count` JSON ask bodies, each about a new seeded 640 x 480 JPEG (seeds from `seed`) and `box(i)`. */
function askBodies(
  count: number,
  seed: number,
  maxTokens: number,
  box: (i: number) => number[],
): Promise<string[]> {
  return Promise.all(
    Array.from({ length: count }, async (_, i) => {
      const jpeg = await jpegOf(seededImage(640, 480, seed + i), 85);
      return JSON.stringify({
        image: `data:image/jpeg;base64,${jpeg.toString("base64")}`,
        box: box(i),
        question: "What colour is it?",
        max_tokens: maxTokens,
      });
    }),
  );
}

const SAM1: SegmenterConfig = {
  family: "sam1",
  imageSize: 1024,
  resize: "longest-side",
  mean: [0.485, 0.456, 0.406],
  std: [0.229, 0.224, 0.225],
  maskSize: 256,
  encoder: "-",
  decoder: "-",
};

interface PillowTimes {
  pillow: string;
  llava_image_ms: number;
  llava_mask_ms: number;
  llava_ms: number;
  sam_ms: number;
}

function pillowTimes(image: RgbImage, maskData: Uint8Array, n: number): PillowTimes | string {
  const python = "/usr/bin/python3";
  if (!existsSync(python)) return "no /usr/bin/python3";
  const rgbFile = path.join(tmp, "rgb.bin");
  const maskFile = path.join(tmp, "mask.bin");
  writeFileSync(rgbFile, image.data);
  writeFileSync(maskFile, maskData);
  const r = spawnSync(
    python,
    [
      path.join(here, "pillow_preprocess.py"),
      rgbFile,
      maskFile,
      String(image.width),
      String(image.height),
      String(n),
    ],
    { encoding: "utf8" },
  );
  if (r.status !== 0) {
    return /No module named/.test(r.stderr)
      ? "Pillow missing (apt-get install python3-pil python3-numpy)"
      : r.stderr.trim();
  }
  return JSON.parse(r.stdout.trim()) as PillowTimes;
}

async function preprocess(): Promise<unknown> {
  out("### Preprocessing: native kernels vs the TypeScript specifications vs Pillow (same run)");
  out();
  out(
    "LLaVA: pad to a square, bicubic to 336, normalise, and one mask's 3-channel path to alpha; SAM: " +
      "bilinear to 1024 on the longest side, normalise, pad. Median ms of " +
      `${repeats} runs (the TypeScript path at 12 MP: 3). Ratios are to Pillow's time.`,
  );
  out();
  out(
    "| image | work | native, 1 thread | native, 2 threads | TypeScript | Pillow | native 1 / Pillow | native 2 / Pillow |",
  );
  out("| --- | --- | --- | --- | --- | --- | --- | --- |");
  const rows: unknown[] = [];
  const pools = {
    // One thread in all: one job at a time, each on one thread (Pillow's condition).
    one: new ImagingPool({ backend: "native", threads: 1, concurrency: 1 }),
    // The default on a 2-core machine: two jobs at once (image and mask), each splitting its rows in two.
    two: new ImagingPool({ backend: "native", threads: 2, concurrency: 2 }),
    ts: new ImagingPool({ backend: "typescript" }),
  };
  let pillowNote: string | undefined;
  for (const [w, h] of [
    [640, 480],
    [1024, 768],
    [4032, 3024],
  ]) {
    const image = seededImage(w, h, 1);
    const mask = seededMask(w, h);
    const pillow = pillowTimes(image, mask.data, repeats);
    if (typeof pillow === "string") pillowNote = pillow;
    const t: Record<string, Record<string, number>> = {};
    for (const [name, pool] of Object.entries(pools)) {
      const n = name === "ts" && w * h > 4e6 ? 3 : repeats;
      const llava = new LlavaImageProcessor(336, pool);
      const sam = new SamProcessor(SAM1, pool);
      t[name] = {
        llava: await timeMs(() => Promise.all([llava.image(image), llava.alpha(mask)]), n),
        sam: await timeMs(() => sam.image(image), n),
      };
    }
    for (const work of ["llava", "sam"] as const) {
      const p = typeof pillow === "string" ? NaN : work === "llava" ? pillow.llava_ms : pillow.sam_ms;
      out(
        `| ${w} x ${h} | ${work === "llava" ? "LLaVA image + mask" : "SAM 1024"} | ${ms(t.one[work])} | ${ms(t.two[work])} | ${ms(t.ts[work])} | ${ms(p)} | ${ratio(t.one[work], p)} | ${ratio(t.two[work], p)} |`,
      );
      rows.push({
        width: w,
        height: h,
        work,
        native1: t.one[work],
        native2: t.two[work],
        typescript: t.ts[work],
        pillow: p,
      });
    }
    log(`preprocess ${w}x${h} done`);
  }
  out();
  if (pillowNote) out(`Pillow: ${pillowNote}.`);
  else out("Pillow 9.4 through /usr/bin/python3 (Debian's python3-pil), single-threaded as Pillow is.");
  out();
  return rows;
}

/** Starts `region-vqa serve` (dist/) and resolves its URL once it listens and is ready. */
async function serve(
  env: NodeJS.ProcessEnv,
  args: string[],
): Promise<{ url: string; stop(): Promise<void> }> {
  const child = spawn(
    process.execPath,
    [path.join(repoRoot, "bin", "region-vqa.js"), "serve", "--port", "0", ...args],
    {
      cwd: repoRoot,
      env: { ...process.env, ...env },
      stdio: ["ignore", "ignore", "pipe"],
    },
  );
  const url = await new Promise<string>((resolve, reject) => {
    let err = "";
    child.stderr.on("data", (d: Buffer) => {
      err += d.toString();
      const m = /listening on (http:\/\/\S+)/.exec(err);
      if (m) resolve(m[1].replace(/\/$/, ""));
    });
    child.on("exit", (code) => reject(new Error(`serve exited with ${code}: ${err}`)));
  });
  for (let i = 0; i < 600; i++) {
    const r = await fetch(`${url}/readyz`).catch(() => undefined);
    if (r?.ok) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  return {
    url,
    stop: () =>
      new Promise((resolve) => {
        child.once("exit", () => resolve());
        child.kill("SIGTERM");
      }),
  };
}

interface LoadResult {
  statuses: Record<string, number>;
  latencies: number[];
  wallSeconds: number;
}

function runLoad(job: object): Promise<LoadResult> {
  const file = path.join(tmp, `job-${Date.now()}-${Math.random()}.json`);
  writeFileSync(file, JSON.stringify(job));
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", path.join(here, "load-child.ts"), file], {
      cwd: repoRoot,
      stdio: ["ignore", "pipe", "inherit"],
    });
    let text = "";
    child.stdout.on("data", (d: Buffer) => (text += d.toString()));
    child.on("exit", (code) =>
      code === 0 ? resolve(JSON.parse(text.trim())) : reject(new Error(`load child ${code}`)),
    );
  });
}

/** A multipart ask body (image file + box + question) written to a file; returns its job entry. */
function multipartAsk(jpeg: Buffer, box: number[], name: string): { file: string; contentType: string } {
  const boundary = `----rvqa${Math.random().toString(16).slice(2)}`;
  const field = (k: string, v: string) =>
    Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="${k}"\r\n\r\n${v}\r\n`);
  const body = Buffer.concat([
    Buffer.from(
      `--${boundary}\r\nContent-Disposition: form-data; name="image"; filename="photo.jpg"\r\nContent-Type: image/jpeg\r\n\r\n`,
    ),
    jpeg,
    Buffer.from("\r\n"),
    field("box", box.join(",")),
    field("question", "What colour is it?"),
    field("max_tokens", "2"),
    Buffer.from(`--${boundary}--\r\n`),
  ]);
  const file = path.join(tmp, `${name}.multipart`);
  writeFileSync(file, body);
  return { file, contentType: `multipart/form-data; boundary=${boundary}` };
}

/**
 * The server's event-loop delay beyond its 10 ms sampling interval: prom-client reports Node's
 * monitorEventLoopDelay as it is, which measures the whole interval (an idle loop reads 10.2 ms).
 */
async function scrapeLag(url: string): Promise<Record<string, number>> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const value = (name: string) =>
    Number(new RegExp(`^${name} (\\S+)$`, "m").exec(text)?.[1] ?? NaN) * 1000 - LAG_RESOLUTION_MS;
  return {
    p50: value("region_vqa_nodejs_eventloop_lag_p50_seconds"),
    p99: value("region_vqa_nodejs_eventloop_lag_p99_seconds"),
    max: value("region_vqa_nodejs_eventloop_lag_max_seconds"),
  };
}

const LAG_RESOLUTION_MS = 10;

async function eventLoop(): Promise<unknown> {
  out("### The event loop while 8 clients upload 12 MP photos (`region-vqa serve`, bundled model)");
  out();
  const photos = await Promise.all([1, 2, 3, 4].map((seed) => jpegOf(seededImage(4032, 3024, seed), 80)));
  const bodies = Array.from({ length: 64 }, (_, i) => {
    const x = 200 + ((i * 211) % 2400);
    const y = 200 + ((i * 157) % 1600);
    return multipartAsk(photos[i % photos.length], [x, y, x + 900 + (i % 7), y + 700], `photo-${i}`);
  });
  out(
    `Each request: a ${(photos[0].length / 2 ** 20).toFixed(1)} MiB 4032 x 3024 JPEG (multipart), a new box ` +
      `(so nothing is cached), max_tokens 2; ${seconds} s of load per row, /healthz polled every 10 ms from ` +
      "another process. The event-loop delay is the server's own (`region_vqa_nodejs_eventloop_lag_*` " +
      "in /metrics, reset when scraped just before the load), less its 10 ms sampling interval.",
  );
  out();
  out(
    "| kernels | asks answered | asks/s | event-loop delay p50 / p99 / max (ms) | /healthz p50 / p99 / max (ms) |",
  );
  out("| --- | --- | --- | --- | --- |");
  const rows: unknown[] = [];
  for (const backend of ["native", "typescript"] as const) {
    const server = await serve(backend === "typescript" ? { REGION_VQA_IMAGING: "typescript" } : {}, [
      "--threads",
      String(threads),
    ]);
    try {
      await scrapeLag(server.url);
      const health: number[] = [];
      let loading = true;
      const poll = (async () => {
        while (loading) {
          const t0 = performance.now();
          await (await fetch(`${server.url}/healthz`)).text();
          health.push(performance.now() - t0);
          await new Promise((r) => setTimeout(r, 10));
        }
      })();
      const load = await runLoad({
        url: server.url,
        path: "/v1/regions/ask",
        clients: 8,
        seconds,
        maxRequests: 100_000,
        bodies,
      });
      loading = false;
      await poll;
      const lag = await scrapeLag(server.url);
      const ok = load.statuses["200"] ?? 0;
      const row = {
        backend,
        answered: ok,
        statuses: load.statuses,
        perSecond: ok / load.wallSeconds,
        lag,
        health: { p50: median(health), p99: quantile(health, 0.99), max: Math.max(...health) },
      };
      rows.push(row);
      out(
        `| ${backend === "native" ? "native (off the event loop)" : "TypeScript (on the event loop: the old path)"} | ${ok} of ${Object.values(load.statuses).reduce((a, b) => a + b, 0)} | ${row.perSecond.toFixed(2)} | ${ms(lag.p50)} / ${ms(lag.p99)} / ${ms(lag.max)} | ${ms(row.health.p50)} / ${ms(row.health.p99)} / ${ms(row.health.max)} |`,
      );
      log(`eventloop ${backend}: ${JSON.stringify(row.statuses)}`);
    } finally {
      await server.stop();
    }
  }
  out();
  return rows;
}

async function ceiling(): Promise<unknown> {
  out("### The server's own ceiling: BENCHMARK-ONLY instant engines of the real shapes");
  out();
  out(
    "The real server and pipeline over a stand-in vision encoder that returns zeros of ViT-L/14@336 + " +
      "LLaVA-1.5's shapes (576 x 4096 per region) and a stand-in LLM that answers six pieces at once " +
      "(bench/instant-engines.ts): what a request costs when the models cost nothing. `ask` with a " +
      "new 640 x 480 JPEG (JSON, base64) and a box each; the client runs in another process.",
  );
  out();
  const images = await askBodies(400, 100, 6, (i) => [40 + (i % 50), 30, 400, 300]);
  const stages: Record<string, number[]> = {};
  const pipeline = LocalRegionVqaPipeline.fromEngines(
    { maxConversations: 16, onStage: (stage, t) => (stages[stage] ??= []).push(t) },
    { encoder: instantEncoder(), llm: instantLlm(16) },
  );
  const app = await buildServer({
    pipeline,
    disposePipelineOnClose: false,
    config: loadConfig({
      env: {},
      flags: {
        logLevel: "silent",
        limits: { maxConcurrentRequests: 16, maxConversations: 16, maxQueue: 64 },
      },
    }),
  });
  const url = (await app.listen({ host: "127.0.0.1", port: 0 })).replace(/\/$/, "");
  out(
    "| clients | requests | req/s | p50 / p99 latency (ms) | main thread busy | preprocess | encode + prefill (instant) |",
  );
  out("| --- | --- | --- | --- | --- | --- | --- |");
  const rows: unknown[] = [];
  try {
    for (const clients of [1, 4, 16]) {
      await new Promise((r) => setTimeout(r, 500));
      pipeline.clearVisionCache();
      for (const k of Object.keys(stages)) delete stages[k];
      const elu0 = performance.eventLoopUtilization();
      const load = await runLoad({
        url,
        path: "/v1/regions/ask",
        clients,
        seconds: Math.min(seconds, 15),
        maxRequests: images.length,
        bodies: images.map((json) => ({ json })),
      });
      const elu = performance.eventLoopUtilization(elu0);
      const ok = load.statuses["200"] ?? 0;
      const st = (k: string) => median(stages[k] ?? []);
      const row = {
        clients,
        statuses: load.statuses,
        perSecond: ok / load.wallSeconds,
        p50: median(load.latencies),
        p99: quantile(load.latencies, 0.99),
        mainThreadBusy: elu.utilization,
        stages: {
          preprocess: st("preprocess"),
          encode: st("encode"),
          prefill: st("prefill"),
        },
      };
      rows.push(row);
      out(
        `| ${clients} | ${ok} of ${load.latencies.length} | ${row.perSecond.toFixed(1)} | ${ms(row.p50)} / ${ms(row.p99)} | ${(elu.utilization * 100).toFixed(0)}% | ${ms(row.stages.preprocess)} | ${ms(row.stages.encode + row.stages.prefill)} |`,
      );
      log(`ceiling ${clients} clients: ${row.perSecond.toFixed(1)} req/s`);
    }
  } finally {
    await app.close();
  }
  out();
  out(
    'Stage columns are medians per request (ms, server side); "main thread busy" is the server\'s ' +
      "event-loop utilisation over the level (JSON parsing, base64, HTTP, scheduling: what still runs on it).",
  );
  out();
  // Where one request's time goes: each piece alone, one at a time, on the same inputs.
  const parsed = JSON.parse(images[0]) as { image: string };
  const limits = loadConfig({ env: {} }).limits;
  const fieldCodes = { missing: "image_missing", undecodable: "image_undecodable" } as const;
  const bytes = bytesFromField(parsed.image, "image", fieldCodes);
  const { decoded } = await decodeRequestImage(bytes, limits);
  const llava = new LlavaImageProcessor(336);
  const box = { kind: "box" as const, box: [40, 30, 400, 300] as [number, number, number, number] };
  let n = 0;
  const app2 = await buildServer({
    pipeline,
    disposePipelineOnClose: false,
    config: loadConfig({ env: {}, flags: { logLevel: "silent" } }),
  });
  const url2 = (await app2.listen({ host: "127.0.0.1", port: 0 })).replace(/\/$/, "");
  const pieces: Array<[string, string, () => Promise<unknown>]> = [
    ["JSON.parse of the body", "event loop", async () => JSON.parse(images[n++ % images.length])],
    ["base64 check + decode", "event loop", async () => bytesFromField(parsed.image, "image", fieldCodes)],
    ["decode (sharp) + SHA-256 of the bytes", "imaging pool", () => decodeRequestImage(bytes, limits)],
    [
      "box mask + its SHA-256",
      "imaging pool",
      async () => sha256Hex(ImagingPool.shared(), (await regionToMaskAsync(box, 640, 480)).data),
    ],
    [
      "LLaVA preprocessing (image + mask)",
      "imaging pool",
      async () => Promise.all([llava.image(decoded), llava.alpha(await regionToMaskAsync(box, 640, 480))]),
    ],
    [
      "pipeline: open (instant encode + prefill) and ask, cache missed",
      "event loop + pool",
      async () => {
        pipeline.clearVisionCache();
        const c = await pipeline.openConversation(bytes, box, { decoded });
        await c.ask("What colour is it?", { maxTokens: 6 }).result;
        await c.dispose();
      },
    ],
    [
      "HTTP round trip of GET /healthz (loopback, Fastify)",
      "event loop",
      async () => (await fetch(`${url2}/healthz`)).text(),
    ],
  ];
  out("One request's pieces, each alone (median ms of 50 runs, one at a time):");
  out();
  out("| piece | runs on | ms |");
  out("| --- | --- | --- |");
  const breakdown: Record<string, number> = {};
  try {
    for (const [name, where, fn] of pieces) {
      breakdown[name] = await timeMs(fn, 50);
      out(`| ${name} | ${where} | ${ms(breakdown[name])} |`);
    }
  } finally {
    await app2.close();
    await pipeline.dispose();
  }
  out();
  return { levels: rows, breakdown };
}

async function batching(): Promise<unknown> {
  out("### Encoder batching across requests (CPU)");
  out();
  out("Bundled model over HTTP: 16 clients, `ask` with a new 640 x 480 JPEG each, max_tokens 4.");
  out();
  out("| batching | req/s | encoder runs per request | regions per run | p50 latency (ms) |");
  out("| --- | --- | --- | --- | --- |");
  const rows: Record<string, unknown> = {};
  const images = await askBodies(160, 1000, 4, () => [40, 30, 400, 300]);
  const models = await resolveModelOptions({});
  const http: unknown[] = [];
  for (const maxRegions of [1, 16]) {
    const pipeline = await createPipeline({
      ...models,
      device: "cpu",
      gpu: false,
      visionThreads: threads,
      llmThreads: 1,
      maxConversations: 4,
      encoderBatch: { maxRegions, maxWaitMs: 0 },
    });
    const app = await buildServer({
      pipeline,
      config: loadConfig({ env: {}, flags: { logLevel: "silent", limits: { maxQueue: 64 } } }),
    });
    const url = (await app.listen({ host: "127.0.0.1", port: 0 })).replace(/\/$/, "");
    try {
      const load = await runLoad({
        url,
        path: "/v1/regions/ask",
        clients: 16,
        seconds,
        maxRequests: images.length,
        bodies: images.map((json) => ({ json })),
      });
      const enc = pipeline.stats().encoder!;
      const ok = load.statuses["200"] ?? 0;
      const row = {
        maxRegions,
        statuses: load.statuses,
        perSecond: ok / load.wallSeconds,
        encoder: enc,
        p50: median(load.latencies),
      };
      http.push(row);
      out(
        `| ${maxRegions === 1 ? "off" : `on (up to ${maxRegions} regions)`} | ${row.perSecond.toFixed(2)} | ${(enc.runs / enc.requests).toFixed(2)} | ${(enc.regions / enc.runs).toFixed(2)} | ${ms(row.p50)} |`,
      );
      log(`batching http maxRegions ${maxRegions}: ${JSON.stringify(enc)}`);
    } finally {
      await app.close();
    }
  }
  rows.http = http;
  out();
  out(
    `Full-size random ViT-L/14@336 (fp32, CPU, ${threads} ONNX threads), the encoder alone: 8 requests of one region each submitted at once.`,
  );
  out();
  out("| batching | encoder runs | wall time (s) | s per region |");
  out("| --- | --- | --- | --- |");
  const dir = await fullSizeVisionModel(threads);
  const encoder = await AlphaClipEncoder.load(dir, { device: "cpu", threads });
  const full: unknown[] = [];
  try {
    const R = encoder.imageSize;
    const llava = new LlavaImageProcessor(R);
    const inputs = await Promise.all(
      Array.from({ length: 8 }, async (_, i) => {
        const image = seededImage(640, 480, 2000 + i);
        const [{ pixelValues }, alpha] = await Promise.all([
          llava.image(image),
          llava.alphas([seededMask(640, 480)]),
        ]);
        return { pixelValues, alpha };
      }),
    );
    await encoder.encode(inputs[0]); // warm-up
    for (const maxRegions of [1, 8]) {
      const batcher = new EncodeBatcher((b) => encoder.encode(b) as never, { maxRegions, maxWaitMs: 0 });
      const t0 = performance.now();
      await Promise.all(inputs.map((i) => batcher.submit(i)));
      const wall = (performance.now() - t0) / 1000;
      const s = batcher.stats();
      full.push({ maxRegions, runs: s.runs, wallSeconds: wall });
      out(
        `| ${maxRegions === 1 ? "off" : "on (up to 8)"} | ${s.runs} | ${wall.toFixed(1)} | ${(wall / 8).toFixed(2)} |`,
      );
      log(`batching full-size maxRegions ${maxRegions}: ${s.runs} runs, ${wall.toFixed(1)} s`);
    }
  } finally {
    await encoder.dispose();
  }
  rows.full = full;
  out();
  return rows;
}

const machine = machineInfo();
out(`## Imaging and the event loop (\`npm run bench:imaging\`)`);
out();
out(
  `${machine.cpuModel}, ${machine.cores} cores, Node ${machine.node}; load average ${machine.loadAverage.join(" / ")} at start.`,
);
out();
const result: Record<string, unknown> = { machine, startedAt: new Date().toISOString() };
try {
  if (parts.includes("preprocess")) result.preprocess = await preprocess();
  if (parts.includes("eventloop")) result.eventloop = await eventLoop();
  if (parts.includes("ceiling")) result.ceiling = await ceiling();
  if (parts.includes("batching")) result.batching = await batching();
} finally {
  rmSync(tmp, { recursive: true, force: true });
}
result.loadAverageAtEnd = os.loadavg().map((l) => round(l, 2));
out(`Load average at the end: ${(result.loadAverageAtEnd as number[]).join(" / ")}.`);
const dir = path.join(repoRoot, ".cache", "bench", "results");
mkdirSync(dir, { recursive: true });
writeFileSync(path.join(dir, "imaging-latest.json"), `${JSON.stringify(result, null, 2)}\n`);
writeFileSync(path.join(dir, "imaging-latest.md"), `${lines.join("\n")}\n`);
process.stdout.write(`${lines.join("\n")}\n`);
process.exit(0);
