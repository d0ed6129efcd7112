/**
 * `npm run bench`: pipeline stage timings (cold / warm cache / follow-up) and HTTP throughput under
 * concurrency, on the bundled model (models/shapes; the tiny test models while it is missing) and on
 * full-size synthetic models. Writes .cache/bench/results/bench-<time>.{json,md} (and latest.*), and
 * prints the markdown tables. Each part runs in a child process of its own, so memory peaks and
 * native engines do not mix between models.
 *
 *   npm run bench -- [--only pipeline,concurrency,segmenter,classify,vision,llm,imaging,cluster] [--model bundled,shapes,tiny,full]
 *     [--repeats N] [--full-repeats N] [--max-tokens N] [--levels 1,4,16] [--seconds S]
 *     [--max-requests N] [--threads N] [--llm-threads N] [--full-layers N]
 *     [--device auto|webgpu|cuda|cpu] [--gpu false|auto|cuda|vulkan|metal] [--max-conversations N]
 *     [--endpoint ask|caption] [--seg-images N] [--seg-clicks N] [--cls-labels 1,24,1000]
 *     [--cls-templates N] [--cluster-levels 1,4,8] [--cluster-requests N] [--cluster-seconds S]
 *     [--cluster-histories 1,3,6] [--cluster-repeats N] [--cluster-threads N] [--out DIR]
 *   npm run bench -- --render .cache/bench/results/latest.json   (markdown of a saved result)
 *
 * Defaults: pipeline on bundled + full, concurrency on bundled (full-size concurrency only when asked:
 * one CPU request takes many seconds), segmenter (bench/segmenter.ts: the bundled segmenter and a
 * SAM 2.1-tiny-shaped stand-in on the CPU, with --threads ONNX threads; --model does not apply),
 * classify (bench/classify.ts: text encoding and zero-shot classify latency on the bundled model's CLIP
 * text tower, CPU, --threads ONNX threads, --repeats runs per row; --model does not apply).
 * vision, llm and imaging run bench/vision.ts, bench/llm.ts and bench/imaging.ts (preprocessing vs
 * Pillow, the event loop under 12 MP uploads, the server's ceiling, encoder batching). cluster (bench/cluster.ts, only when asked: it needs
 * redis-server, haproxy and dist/) runs the concurrency load against one plain `serve` and through HAProxy
 * with 1 and 2 replicas sharing Redis (deploy/local-cluster.sh), times follow-ups on the owning replica
 * vs. rebuilt on the other one and one SIGKILL failover, and counts Redis commands per request.
 * On a software adapter (Mesa's lavapipe), `--device webgpu` numbers check the GPU path, not its speed.
 */
import { spawn } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { ORT_DEVICES, type OrtDevice } from "../src/common/ort/index.js";
import { LLM_GPUS, type LlmGpu } from "../src/llm/index.js";
import { runClassifyBench, type ClassifyBenchResult } from "./classify.js";
import { runClusterBench, type ClusterBenchResult } from "./cluster.js";
import { runConcurrencyBench, type ConcurrencyBenchResult, type ConcurrencyEndpoint } from "./concurrency.js";
import { resolveModelSet, type ModelSetName } from "./model-sets.js";
import { runPipelineBench, type PipelineBenchResult } from "./pipeline.js";
import { runSegmenterBench, type SegmenterBenchResult } from "./segmenter.js";
import { renderReport, type BenchReport, type ExternalBenchResult } from "./report.js";
import { machineInfo, round } from "./stats.js";
import { runTsChild } from "./synthetic-models.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(here, "..");

type Part = "pipeline" | "concurrency" | "segmenter" | "classify" | "vision" | "llm" | "imaging" | "cluster";
type ChildPart = "pipeline" | "concurrency" | "segmenter" | "classify" | "cluster";
const PARTS: Part[] = [
  "pipeline",
  "concurrency",
  "segmenter",
  "classify",
  "vision",
  "llm",
  "imaging",
  "cluster",
];
const CHILD_PARTS: ChildPart[] = ["pipeline", "concurrency", "segmenter", "classify", "cluster"];
const MODEL_SETS: ModelSetName[] = ["bundled", "shapes", "tiny", "full"];

const { values } = parseArgs({
  options: {
    only: { type: "string" },
    model: { type: "string" },
    repeats: { type: "string", default: "3" },
    "full-repeats": { type: "string", default: "1" },
    "max-tokens": { type: "string", default: "32" },
    levels: { type: "string", default: "1,4,16" },
    seconds: { type: "string", default: "30" },
    "max-requests": { type: "string", default: "150" },
    threads: { type: "string", default: String(Math.min(2, os.availableParallelism())) },
    "llm-threads": { type: "string", default: "1" },
    "full-layers": { type: "string", default: "2" },
    device: { type: "string", default: "auto" },
    gpu: { type: "string", default: "false" },
    "max-conversations": { type: "string", default: "4" },
    "context-size": { type: "string", default: "1024" },
    endpoint: { type: "string", default: "ask" },
    "seg-images": { type: "string", default: "3" },
    "seg-clicks": { type: "string", default: "10" },
    "cls-labels": { type: "string", default: "1,24,1000" },
    "cls-templates": { type: "string", default: "3" },
    "cluster-levels": { type: "string", default: "1,4,8" },
    "cluster-requests": { type: "string", default: "200" },
    "cluster-seconds": { type: "string", default: "120" },
    "cluster-histories": { type: "string", default: "1,3,6" },
    "cluster-repeats": { type: "string", default: "10" },
    "cluster-threads": { type: "string", default: "1" },
    out: { type: "string", default: path.join(repoRoot, ".cache", "bench", "results") },
    child: { type: "string" },
    render: { type: "string" },
  },
  strict: true,
});

function fail(message: string): never {
  process.stderr.write(`bench: ${message}\n`);
  process.exit(2);
}

function positive(name: keyof typeof values): number {
  const n = Number(values[name]);
  if (!Number.isInteger(n) || n < 1)
    fail(`--${name} must be a positive integer, got "${String(values[name])}"`);
  return n;
}

function list<T extends string>(
  value: string | undefined,
  allowed: readonly T[],
  flag: string,
): T[] | undefined {
  if (value === undefined) return undefined;
  const items = value.split(",").map((s) => s.trim()) as T[];
  for (const item of items)
    if (!allowed.includes(item)) fail(`--${flag}: "${item}" is not one of ${allowed.join(", ")}`);
  return items;
}

const device = values.device as OrtDevice;
if (!ORT_DEVICES.includes(device)) fail(`--device must be one of ${ORT_DEVICES.join(", ")}`);
const gpu = (values.gpu === "false" ? false : values.gpu) as LlmGpu;
if (!LLM_GPUS.includes(gpu)) fail(`--gpu must be one of ${LLM_GPUS.join(", ")}`);
if (values.endpoint !== "ask" && values.endpoint !== "caption") fail(`--endpoint must be ask or caption`);
const endpoint = values.endpoint as ConcurrencyEndpoint;
const levels = values.levels!.split(",").map(Number);
if (levels.some((l) => !Number.isInteger(l) || l < 1))
  fail(`--levels must be positive integers, e.g. 1,4,16`);
const positiveList = (name: keyof typeof values, example: string): number[] => {
  const items = String(values[name]).split(",").map(Number);
  if (items.some((n) => !Number.isInteger(n) || n < 1))
    fail(`--${name} must be positive integers, e.g. ${example}`);
  return items;
};
const clsLabels = values["cls-labels"]!.split(",").map(Number);
if (clsLabels.some((n) => !Number.isInteger(n) || n < 1 || n > 1000))
  fail(`--cls-labels must be label counts from 1 to 1000, e.g. 1,24,1000`);
const common = {
  maxTokens: positive("max-tokens"),
  visionThreads: positive("threads"),
  llmThreads: positive("llm-threads"),
  device,
  gpu,
  contextSize: positive("context-size"),
};
const modelOptions = { fullLayers: positive("full-layers"), threads: common.visionThreads };
const log = (message: string): void => void process.stderr.write(`bench: ${message}\n`);

/** Child mode: one part on one model set; the result is the last line of stdout. */
async function child(part: ChildPart, model: ModelSetName): Promise<void> {
  if (part === "segmenter") {
    const result = await runSegmenterBench(
      {
        threads: common.visionThreads,
        images: positive("seg-images"),
        clicks: positive("seg-clicks"),
        photo: true,
      },
      log,
    );
    process.stdout.write(`\n${JSON.stringify(result)}\n`);
    return;
  }
  if (part === "cluster") {
    const result = await runClusterBench(
      {
        levels: positiveList("cluster-levels", "1,4,8"),
        requests: positive("cluster-requests"),
        seconds: positive("cluster-seconds"),
        maxTokens: common.maxTokens,
        threads: positive("cluster-threads"),
        llmThreads: common.llmThreads,
        histories: positiveList("cluster-histories", "1,3,6"),
        repeats: positive("cluster-repeats"),
        commandSamples: positive("cluster-repeats"),
        failover: true,
        redisBenchmark: true,
        readyTimeoutS: 240,
      },
      log,
    );
    process.stdout.write(`\n${JSON.stringify(result)}\n`);
    return;
  }
  if (part === "classify") {
    const result = await runClassifyBench(
      {
        threads: common.visionThreads,
        repeats: positive("repeats"),
        labelCounts: clsLabels,
        templates: positive("cls-templates"),
      },
      log,
    );
    process.stdout.write(`\n${JSON.stringify(result)}\n`);
    return;
  }
  const models = await resolveModelSet(model, modelOptions);
  let result: PipelineBenchResult | ConcurrencyBenchResult;
  if (part === "pipeline") {
    const repeats = models.name === "full" ? positive("full-repeats") : positive("repeats");
    result = await runPipelineBench(models, { ...common, repeats }, log);
  } else {
    result = await runConcurrencyBench(
      models,
      {
        ...common,
        endpoint,
        levels,
        seconds: positive("seconds"),
        maxRequests: positive("max-requests"),
        maxConversations: positive("max-conversations"),
      },
      log,
    );
  }
  process.stdout.write(`\n${JSON.stringify(result)}\n`);
}

function passthroughArgs(): string[] {
  const skip = new Set(["only", "model", "child", "out"]);
  return Object.entries(values).flatMap(([k, v]) =>
    skip.has(k) || v === undefined ? [] : [`--${k}`, String(v)],
  );
}

function runChild(part: ChildPart, model: ModelSetName): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const p = spawn(
      process.execPath,
      [
        "--import",
        "tsx",
        fileURLToPath(import.meta.url),
        "--child",
        part,
        "--model",
        model,
        ...passthroughArgs(),
      ],
      { cwd: repoRoot, stdio: ["ignore", "pipe", "inherit"] },
    );
    let out = "";
    p.stdout.on("data", (d: Buffer) => (out += d.toString()));
    p.on("error", reject);
    p.on("exit", (code, signal) => {
      if (code !== 0) return reject(new Error(`${part} on ${model} exited with ${code ?? signal}`));
      try {
        resolve(JSON.parse(out.trim().split("\n").pop()!));
      } catch {
        reject(new Error(`${part} on ${model} printed no result`));
      }
    });
  });
}

async function parent(): Promise<void> {
  const parts = list(values.only, PARTS, "only") ?? ["pipeline", "concurrency", "segmenter", "classify"];
  const models = list(values.model, MODEL_SETS, "model");
  const started = new Date();
  const segmenterResults: SegmenterBenchResult[] = [];
  const classifyResults: ClassifyBenchResult[] = [];
  const clusterResults: ClusterBenchResult[] = [];
  const report: BenchReport = {
    startedAt: started.toISOString(),
    finishedAt: "",
    machine: machineInfo(),
    loadAverageAtEnd: [],
    args: process.argv.slice(2),
    pipeline: [],
    concurrency: [],
    segmenter: segmenterResults,
    classify: classifyResults,
    cluster: clusterResults,
    external: [],
    failures: [],
  };
  log(
    `machine: ${report.machine.cpuModel}, ${report.machine.cores} cores, load ${report.machine.loadAverage.join(" ")}`,
  );
  for (const part of parts) {
    if (part === "vision" || part === "llm" || part === "imaging") {
      const script = path.join(here, `${part}.ts`);
      const args =
        part === "llm"
          ? ["--threads", String(common.llmThreads)]
          : ["--threads", String(common.visionThreads)];
      log(`running bench/${part}.ts ${args.join(" ")}`);
      try {
        const output = await runTsChild(script, args);
        const external: ExternalBenchResult = {
          part,
          command: `npm run bench:${part} -- ${args.join(" ")}`,
          output,
        };
        report.external.push(external);
      } catch (err) {
        report.failures.push({ part, model: "-", error: (err as Error).message });
      }
      continue;
    }
    if (part === "segmenter") {
      log("segmenter (bundled segmenter + SAM 2.1-tiny-shaped stand-in, CPU)");
      try {
        segmenterResults.push((await runChild(part, "bundled")) as SegmenterBenchResult);
      } catch (err) {
        report.failures.push({ part, model: "-", error: (err as Error).message });
      }
      continue;
    }
    if (part === "cluster") {
      log("cluster (plain serve, then 1 and 2 replicas behind HAProxy with Redis; bundled model, CPU)");
      try {
        clusterResults.push((await runChild(part, "bundled")) as ClusterBenchResult);
      } catch (err) {
        report.failures.push({ part, model: "-", error: (err as Error).message });
      }
      continue;
    }
    if (part === "classify") {
      log("classify (bundled model's CLIP text tower + Alpha-CLIP, CPU)");
      try {
        classifyResults.push((await runChild(part, "bundled")) as ClassifyBenchResult);
      } catch (err) {
        report.failures.push({ part, model: "-", error: (err as Error).message });
      }
      continue;
    }
    const sets = models ?? (part === "pipeline" ? ["bundled", "full"] : ["bundled"]);
    for (const model of sets) {
      log(`${part} on ${model}`);
      try {
        const result = await runChild(part, model);
        if (part === "pipeline") report.pipeline.push(result as PipelineBenchResult);
        else report.concurrency.push(result as ConcurrencyBenchResult);
      } catch (err) {
        report.failures.push({ part, model, error: (err as Error).message });
      }
    }
  }
  report.finishedAt = new Date().toISOString();
  report.loadAverageAtEnd = os.loadavg().map((l) => round(l, 2) ?? 0);
  const markdown = renderReport(report);
  mkdirSync(values.out!, { recursive: true });
  const stamp = started.toISOString().replace(/[:.]/g, "-");
  for (const name of [`bench-${stamp}`, "latest"]) {
    writeFileSync(path.join(values.out!, `${name}.json`), `${JSON.stringify(report, null, 2)}\n`);
    writeFileSync(path.join(values.out!, `${name}.md`), `${markdown}\n`);
  }
  process.stdout.write(`${markdown}\n`);
  log(
    `results in ${path.relative(process.cwd(), path.join(values.out!, `bench-${stamp}.json`))} (and .md, latest.*)`,
  );
  if (report.failures.length) process.exitCode = 1;
}

if (values.render) {
  // Re-renders the markdown of a saved JSON result (e.g. after changing the tables).
  const saved = JSON.parse(readFileSync(values.render, "utf8")) as BenchReport;
  process.stdout.write(`${renderReport(saved)}\n`);
} else if (values.child) {
  if (!CHILD_PARTS.includes(values.child as ChildPart)) fail(`--child must be ${CHILD_PARTS.join(", ")}`);
  const model = list(values.model, MODEL_SETS, "model")?.[0] ?? fail("--child needs --model");
  await child(values.child as ChildPart, model);
} else {
  await parent();
}
