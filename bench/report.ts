/** Markdown tables of benchmark results (what `npm run bench` prints and saves beside the JSON). */
import type { ConcurrencyBenchResult } from "./concurrency.js";
import type { PipelineBenchResult } from "./pipeline.js";
import type { MachineInfo } from "./stats.js";

export interface ExternalBenchResult {
  part: "vision" | "llm";
  command: string;
  output: string;
}

export interface BenchReport {
  startedAt: string;
  finishedAt: string;
  machine: MachineInfo;
  /** Load averages when the run ended (the machine is shared; numbers are indicative). */
  loadAverageAtEnd: number[];
  args: string[];
  pipeline: PipelineBenchResult[];
  concurrency: ConcurrencyBenchResult[];
  external: ExternalBenchResult[];
  failures: Array<{ part: string; model: string; error: string }>;
}

const cell = (v: number | null | undefined, unit = ""): string =>
  v === null || v === undefined ? "–" : `${v}${unit}`;
const pct = (v: number | null): string => (v === null ? "–" : `${(v * 100).toFixed(1)}%`);

export function machineLine(m: MachineInfo, loadAtEnd?: number[]): string {
  const load = `load average ${m.loadAverage.join(" / ")} (1/5/15 min) at start${loadAtEnd ? `, ${loadAtEnd.join(" / ")} at end` : ""}`;
  return `${m.cpuModel}, ${m.cores} cores, ${m.totalMemGiB} GiB RAM, Node ${m.node}, ${m.platform}; ${load}`;
}

export function pipelineTable(r: PipelineBenchResult): string {
  const o = r.options;
  const lines = [
    `### Pipeline stages: ${r.models.set} (${r.models.description})`,
    "",
    ...(r.models.note ? [`> ${r.models.note}`, ""] : []),
    ...(r.devices?.softwareAdapter
      ? [
          `> The vision models ran on ${r.devices.vision}, a software (CPU-emulated) GPU: these numbers check the GPU code path, they say nothing of GPU speed.`,
          "",
        ]
      : []),
    `device ${o.device}${r.devices ? ` (vision on ${r.devices.vision}, LLM on ${r.devices.llm})` : ""}, llama.cpp gpu ${String(o.gpu)}; ONNX Runtime ${o.visionThreads} thread(s), llama.cpp ${o.llmThreads} thread(s); ` +
      `greedy, max ${o.maxTokens} tokens; median of ${o.repeats} run(s); load ${cell(r.loadMs, " ms")}, first request after load ${cell(r.warmupMs, " ms")}; peak RSS ${r.peakRssMiB} MiB`,
    "",
    "| scenario | decode ms | preprocess ms | encode ms | project ms | prefill ms (system + image) | question tokens evaluated | question → first token ms | **TTFT ms** | decode tok/s | answer tokens | encoder ran | cache hits / misses |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ...r.scenarios
      .map((s) =>
        [
          s.scenario,
          cell(s.stagesMs.decode),
          cell(s.stagesMs.preprocess),
          cell(s.stagesMs.encode),
          cell(s.stagesMs.project),
          cell(s.stagesMs.prefill),
          cell(s.evaluatedPromptTokens),
          cell(s.questionTtftMs),
          `**${cell(s.ttftMs)}**`,
          cell(s.decodeTokensPerSecond),
          cell(s.completionTokens),
          `${s.encoderRuns}/${s.runs}`,
          `${s.cacheHits} / ${s.cacheMisses}`,
        ].join(" | "),
      )
      .map((row) => `| ${row} |`),
    "",
    `Follow-up TTFT / first-question TTFT (cold): **${pct(r.followUpOverColdTtft)}**; / warm-cache first question: ${pct(r.followUpOverWarmTtft)}.`,
    "TTFT is measured from the image bytes for cold and warm, from the question for the follow-up. " +
      '"–": the stage did not run.',
  ];
  return lines.join("\n");
}

export function concurrencyTable(r: ConcurrencyBenchResult): string {
  const o = r.options;
  const lines = [
    `### Throughput under concurrency: ${r.models.set} (${r.models.description})`,
    "",
    ...(r.models.note ? [`> ${r.models.note}`, ""] : []),
    ...(o.device === "webgpu"
      ? [
          "> With `--device webgpu` on a software adapter (e.g. Mesa's lavapipe) these numbers say nothing of GPU speed.",
          "",
        ]
      : []),
    `${r.endpoint}; ${r.imageSize}, a different image per request; max ${o.maxTokens} tokens; ` +
      `${o.maxConversations} LLM sequences; ONNX Runtime ${o.visionThreads} thread(s), llama.cpp ${o.llmThreads}; ` +
      `each level up to ${o.seconds} s or ${o.maxRequests} requests`,
    "",
    "| clients | requests | errors | requests/s | p50 ms | p95 ms | p99 ms | answer tok/s | vision cache hits | peak RSS MiB |",
    "|---|---|---|---|---|---|---|---|---|---|",
    ...r.levels.map(
      (l) =>
        `| ${l.clients} | ${l.requests} | ${l.errors}${
          l.errors
            ? ` (${Object.entries(l.errorCodes)
                .map(([k, v]) => `${k} ${v}`)
                .join(", ")})`
            : ""
        } | ` +
        `${cell(l.requestsPerSecond)} | ${cell(l.latencyMs.p50)} | ${cell(l.latencyMs.p95)} | ${cell(l.latencyMs.p99)} | ` +
        `${cell(l.completionTokensPerSecond)} | ${l.cacheHits} | ${l.peakRssMiB} |`,
    ),
  ];
  return lines.join("\n");
}

export function renderReport(report: BenchReport): string {
  const parts = [
    "## Benchmark results",
    "",
    `Machine: ${machineLine(report.machine, report.loadAverageAtEnd)}. Run ${report.startedAt} – ${report.finishedAt}.`,
    `Command: \`npm run bench -- ${report.args.join(" ")}\``,
    "",
    ...report.pipeline.map((p) => `${pipelineTable(p)}\n`),
    ...report.concurrency.map((c) => `${concurrencyTable(c)}\n`),
    ...report.external.map((e) => `### ${e.part} (\`${e.command}\`)\n\n${e.output.trim()}\n`),
    ...(report.failures.length
      ? ["### Failures", "", ...report.failures.map((f) => `- ${f.part} on ${f.model}: ${f.error}`), ""]
      : []),
  ];
  return parts.join("\n");
}
