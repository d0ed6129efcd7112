/** Markdown tables of benchmark results (what `npm run bench` prints and saves beside the JSON). */
import type { ClassifyBenchResult } from "./classify.js";
import type { ClusterBenchResult, OpCost } from "./cluster.js";
import type { ConcurrencyBenchResult } from "./concurrency.js";
import type { PipelineBenchResult } from "./pipeline.js";
import type { SegmenterBenchResult, Spread } from "./segmenter.js";
import type { MachineInfo } from "./stats.js";

export interface ExternalBenchResult {
  part: "vision" | "llm" | "imaging";
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
  /** Absent from results saved before the segmenter bench existed. */
  segmenter?: SegmenterBenchResult[];
  /** Absent from results saved before the classify bench existed. */
  classify?: ClassifyBenchResult[];
  /** Absent from results saved before the cluster bench existed. */
  cluster?: ClusterBenchResult[];
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

const spreadCell = (s: Spread): string => `${cell(s.median)} / ${cell(s.p90)}`;
const gmac = (macs: number): string => `${(macs / 1e9).toFixed(2)} GMAC`;
const mib = (bytes: number | null): string =>
  bytes === null
    ? "–"
    : bytes >= 2 ** 20
      ? `${(bytes / 2 ** 20).toFixed(1)} MiB`
      : `${(bytes / 1024).toFixed(1)} KiB`;

export function segmenterTable(r: SegmenterBenchResult): string {
  const o = r.options;
  const standIn = r.models.find((m) => m.key === "sam21-tiny-shaped");
  // The fastest encoder run over the stand-in's images: the least disturbed on a shared machine.
  const runs = (standIn?.rows ?? [])
    .map((row) => row.firstClick.encoderRunMinMs)
    .filter((v): v is number => v !== null && v > 0);
  const encodeOnlyMs = runs.length ? Math.min(...runs) : null;
  const lines = [
    "### Segmenter: encode once, click many (CPU)",
    "",
    `CPU only, ONNX Runtime ${o.threads} intra-op thread(s) on a ${r.cores}-core machine (segmenters and Alpha-CLIP alike), ` +
      `load average ${r.loadAverage.start.join(" / ")} at the start, ${r.loadAverage.end.join(" / ")} at the end; ` +
      `${o.images} new image(s) per row, each clicked once (first click: the encoder runs) and then ${o.clicks} more time(s) (embeddings cached). ` +
      "First-click columns are medians over the images; further clicks median / p90 over all of them. " +
      "On a small shared machine these numbers are noisy: compare them with each other, not across runs.",
    "",
    ...r.models.flatMap((m) => [
      `- **${m.key}**: ${m.label}; ${m.source}. Input ${m.imageSize}x${m.imageSize}, masks ${m.maskSize}x${m.maskSize}, ` +
        `embeddings ${m.embeddings.join(" + ")}; folder ${mib(m.modelBytes)}` +
        `${m.writeMs !== undefined ? ` (written in ${m.writeMs} ms)` : ""}; **load ${m.loadMs} ms** (manifest + two ONNX sessions, each in its worker thread); ` +
        `first click after load ${m.firstRunAfterLoadMs} ms (ORT's first run, not in the table); ` +
        `encoder ${gmac(m.encoderMacs)} per image, decoder ${gmac(m.decoderMacs)} per prompt (convolutions)` +
        `${m.uncountedLayers.length ? `; not counted: ${m.uncountedLayers.join(", ")}` : ""}.`,
      ...(m.note ? [`  > ${m.note}`] : []),
    ]),
    `- **Alpha-CLIP** (${r.alphaClip.dir}, ${r.alphaClip.imageSize} px): load ${r.alphaClip.loadMs} ms, first run after load ${r.alphaClip.firstRunAfterLoadMs} ms; ` +
      "its columns time LLaVA preprocessing (pad, bicubic resize, alpha from the region) and the encoder on the same image and region as the segmenter's first click.",
    "",
    "| model | images | first click: encode ms | (of which SAM preprocess ms) | decode ms | post-process ms | **first click total ms** | further clicks: decode ms p50 / p90 | post-process ms p50 / p90 | hash + prompt + copy ms p50 / p90 | **further click total ms p50 / p90** | embeddings / image | Alpha-CLIP preprocess ms | **Alpha-CLIP encode ms** | empty masks |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ...r.models.flatMap((m) =>
      m.rows.map(
        (row) =>
          `| ${m.key} | ${row.images} (${row.imageCount}: ${row.sizes}) | ${cell(row.firstClick.encodeMs)} | ${cell(row.firstClick.preprocessMs)} | ` +
          `${cell(row.firstClick.decodeMs)} | ${cell(row.firstClick.postprocessMs)} | **${cell(row.firstClick.totalMs)}** | ` +
          `${spreadCell(row.furtherClicks.decodeMs)} | ${spreadCell(row.furtherClicks.postprocessMs)} | ${spreadCell(row.furtherClicks.otherMs)} | **${spreadCell(row.furtherClicks.totalMs)}** | ` +
          `${mib(row.embeddingBytesPerImage)} | ${cell(row.alphaClip.preprocessMs)} | **${cell(row.alphaClip.encodeMs)}** | ${row.emptyMasks} |`,
      ),
    ),
    "",
    "Total columns are the wall time of `segment()`: besides encode/decode/post-process they hold hashing the image (the cache key), " +
      "encoding the prompt and copying the cached embeddings for the decoder. Empty masks (untrained weights find nothing) are timed by the wall clock only.",
  ];
  if (standIn) {
    const est = r.hieraTinyEncoderMacsEstimate;
    const rate = encodeOnlyMs !== null ? standIn.encoderMacs / (encodeOnlyMs / 1000) : null;
    lines.push(
      "",
      "**Compute: the stand-in has SAM 2.1-tiny's I/O, not its compute.** " +
        `Its encoder is ${gmac(standIn.encoderMacs)} per image; the real Hiera-tiny encoder is about ${gmac(est)} by our count ` +
        `(${(est / standIn.encoderMacs).toFixed(0)}x; linear layers, convs and attention matmuls from sam2.1_hiera_t.yaml's configuration, an estimate, not a measurement). ` +
        `The stand-in's decoder (${gmac(standIn.decoderMacs)} of convolutions per prompt) is not SAM's two-way transformer decoder either.`,
      "",
      `Reference (second-hand): ${r.reference} That is about ${(est / r.referenceEncodeSeconds / 1e9).toFixed(0)} GMAC/s by the count above.` +
        (rate !== null
          ? ` Here the stand-in's encoder ran at about ${(rate / 1e9).toFixed(1)} GMAC/s (its fastest encoder run, ${encodeOnlyMs!.toFixed(0)} ms without SAM preprocessing, ${o.threads} thread(s), ` +
            `load average ${r.loadAverage.start[0]} at the start); at that rate Hiera-tiny would take roughly ${(est / rate).toFixed(1)} s per image here. ` +
            "That extrapolation is crude and probably pessimistic: the stand-in's thin convolutions (3-256 channels) use a CPU worse than Hiera's wide matrix products, and this machine is shared."
          : ""),
    );
  }
  lines.push("", `Peak RSS ${r.peakRssMiB} MiB.`);
  return lines.join("\n");
}

export function classifyTable(r: ClassifyBenchResult): string {
  const o = r.options;
  const t = r.textModel;
  const params =
    t.parameters >= 1e6 ? `${(t.parameters / 1e6).toFixed(2)} M` : `${(t.parameters / 1e3).toFixed(1)} k`;
  const lines = [
    "### Zero-shot classification: text encoding and classify latency (CPU)",
    "",
    `CPU only, ONNX Runtime ${o.threads} intra-op thread(s) on a ${r.cores}-core machine (text and vision towers), ` +
      `load average ${r.loadAverage.start.join(" / ")} at the start, ${r.loadAverage.end.join(" / ")} at the end; ` +
      `median / p90 over ${o.repeats} run(s) per row. On a small shared machine these numbers are noisy: compare them with each other, not across runs.`,
    "",
    `- **Text tower** ${t.name} (${t.dir}): width ${t.width}, ${t.layers} layers, vocabulary ${t.vocabSize}, features ${t.embedDim}, context ${t.contextLength}; ` +
      `**${params} parameters** (${t.parameters}), ${t.precision}, folder ${mib(t.bytes)}; load ${t.loadMs} ms, first encode after load ${t.firstRunAfterLoadMs} ms (not in the tables).`,
    `- **Vision**: ${r.vision.dir} (${r.vision.imageSize} px Alpha-CLIP + projector); pipeline load (vision, text, LLM) ${r.pipelineLoadMs} ms, first classify after load ${r.firstClassifyMs} ms (not in the tables).`,
    `- **Labels**: the 24 colour-shape labels of the shapes world, then made-up distinct ones (${r.syntheticExample ? `"${r.syntheticExample}", ...` : "none needed"}); ` +
      `templates ${r.templatesUsed.map((x) => `"${x}"`).join(", ")} (the first alone unless the row says more).`,
    "",
    "**Text encoding** (the classifier's miss path: tokenize, then the text tower in ONNX runs of at most 64 rows; one template):",
    "",
    "| labels | tokens / text | ONNX runs | **ms / label** p50 / p90 | tokenize ms / label (empty BPE cache) | tokenize ms / label (warm BPE cache) | ONNX ms / label | whole call ms p50 / p90 |",
    "|---|---|---|---|---|---|---|---|",
    ...r.encode.map(
      (e) =>
        `| ${e.labels} | ${e.meanTokens} | ${e.onnxRuns} | **${spreadCell(e.perLabelMs)}** | ${spreadCell(e.tokenizePerLabelMs)} | ` +
        `${spreadCell(e.tokenizeWarmPerLabelMs)} | ${spreadCell(e.onnxPerLabelMs)} | ${spreadCell(e.callMs)} |`,
    ),
    "",
    "**Classify** one mask region of a shapes scene (`classifyRegions`, image bytes to both rankings). " +
      "cold: a new image and an emptied text cache; new image: a new image, the labels' text features cached (a fixed label set: the baseline); " +
      "warm: the same image and labels again (both caches answer: decode, label checks, scoring).",
    "",
    "| labels | templates | scenario | **total ms** p50 / p90 | vision ms p50 / p90 | rest ms p50 / p90 | texts encoded / cached | text cache misses | text ONNX runs | vision encoder runs | vision cache hits / misses |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
    ...r.classify.map(
      (c) =>
        `| ${c.labels} | ${c.templates} | ${c.scenario} | **${spreadCell(c.totalMs)}** | ${spreadCell(c.visionMs)} | ${spreadCell(c.otherMs)} | ` +
        `${c.textEncoded} / ${c.textCached} | ${c.textCacheMisses} | ${c.textOnnxRuns} | ${c.visionEncoderRuns}/${c.runs} | ${c.visionCacheHits} / ${c.visionCacheMisses} |`,
    ),
    "",
    "Vision: the stages the pipeline reports (decode, preprocess, encode, project); rest: everything else in the call (label checks, which tokenize every text, " +
      "text features from the cache or the text tower, normalising, scoring, ranking both ways). Counts are summed over the runs.",
  ];
  const baselines = r.classify
    .filter((c) => c.scenario === "cold")
    .flatMap((cold) => {
      const fixed = r.classify.find(
        (c) => c.scenario === "new image" && c.labels === cold.labels && c.templates === cold.templates,
      );
      if (!fixed || cold.otherMs.median === null || fixed.otherMs.median === null) return [];
      const text = cold.otherMs.median - fixed.otherMs.median;
      return [
        `| ${cold.labels} | ${cold.templates} | ${cell(cold.totalMs.median)} | ${cell(fixed.totalMs.median)} | ` +
          `${cell(cold.otherMs.median)} | ${cell(fixed.otherMs.median)} | **${text.toFixed(2)}** |`,
      ];
    });
  if (baselines.length) {
    lines.push(
      "",
      "**Baseline: the same classify with the text features precomputed** (medians, ms; cold vs new image: both encode a new image, " +
        "so the difference outside the vision stages is the text encoding, free of the vision encoder's noise):",
      "",
      "| labels | templates | total, cold | total, text precomputed | rest, cold | rest, text precomputed | **text encoding in the request** |",
      "|---|---|---|---|---|---|---|",
      ...baselines,
    );
  }
  if (r.textCache) {
    const c = r.textCache;
    lines.push(
      "",
      `Text cache after a cold run of ${c.labels} labels: ${c.entries} entries, **${mib(c.bytes)}** of features as the LRU counts them ` +
        `(${c.entries ? Math.round(c.bytes / c.entries) : 0} B each: ${r.textModel.embedDim} float32); the keys (model folder + text, ${c.keyChars} characters) are not counted.`,
    );
  }
  lines.push(
    "",
    `Peak RSS of the part ${r.peakRssMiB} MiB (the encoding table's text session, then the pipeline with vision, text tower and LLM).`,
  );
  return lines.join("\n");
}

const OP_MEANING: Record<string, string> = {
  feature_get: "MGET of a region's shared embeddings (first question; rebuild when not local)",
  feature_set: "SET of newly encoded embeddings, with TTL (in the background of the answer)",
  transcript_get:
    "GET of a transcript (every follow-up: to rebuild, or to check that no other replica continued it)",
  transcript_set: "SET of the whole transcript after each answer (before the answer is sent)",
  transcript_delete: "DEL of a transcript (DELETE /v1/regions/conversations/:id)",
};

/** Operations whose round trip a request waits for (feature_set is written in the background). */
const BLOCKING_OPS: Record<string, boolean> = {
  feature_get: true,
  feature_set: false,
  transcript_get: true,
  transcript_set: true,
  transcript_delete: true,
};

const count = (m: Record<string, number>): string =>
  Object.entries(m)
    .map(([k, v]) => `${k} ${v}`)
    .join(", ");

export function clusterTables(r: ClusterBenchResult): string {
  const o = r.options;
  const baseline = r.setups.find((s) => s.key === "baseline");
  const lines = [
    "### Scale-out: replicas behind HAProxy with Redis, on one machine",
    "",
    `${r.models.description}; every server process with ONNX Runtime ${o.threads} thread(s) and llama.cpp ${o.llmThreads} thread(s), ` +
      `on a ${r.cores}-core machine; load average ${r.loadAverage.start.join(" / ")} at the start, ${r.loadAverage.end.join(" / ")} at the end. ` +
      `Load: POST /v1/regions/ask first questions ("${r.models.question}"), ${r.imageSize}, a different image per request ` +
      `and the same images in every setup, greedy, max ${o.maxTokens} tokens; each level ${o.requests} requests (at most ${o.seconds} s).`,
    "",
    ...r.setups.map(
      (s) =>
        `- **${s.label}**: ready ${(s.readyMs / 1000).toFixed(1)} s after spawning; load average ${s.loadAverage.start[0]} at its start, ${s.loadAverage.end[0]} at its end.`,
    ),
    "",
    "| setup | clients | requests | errors | **requests/s** | vs. plain serve | **p50 ms** | **p90 ms** | p99 ms | answers per replica | encoder runs | vision cache hits | CPU cores: servers / HAProxy+Redis / bench client / whole machine | CPU ms per request: servers / HAProxy+Redis | server RSS MiB |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ...r.setups.flatMap((s) =>
      s.levels.map((l) => {
        const base = baseline?.levels.find((b) => b.clients === l.clients)?.requestsPerSecond;
        const ratio =
          s.key === "baseline" || !base || l.requestsPerSecond === null
            ? "–"
            : `${(l.requestsPerSecond / base).toFixed(2)}x`;
        const errors = l.errors ? `${l.errors} (${count(l.errorCodes)})` : "0";
        return (
          `| ${s.label} | ${l.clients} | ${l.requests} | ${errors} | **${cell(l.requestsPerSecond)}** | ${ratio} | ` +
          `**${cell(l.latencyMs.p50)}** | **${cell(l.p90Ms)}** | ${cell(l.latencyMs.p99)} | ${count(l.perReplica)} | ` +
          `${l.encoderRuns} | ${l.visionCacheHits} | ` +
          `${cell(l.cpuCores?.servers)} / ${cell(l.cpuCores?.lbRedis)} / ${cell(l.cpuCores?.client)} / ${cell(l.cpuCores?.machine)} | ` +
          `${cell(l.cpuMsPerRequest?.servers)} / ${cell(l.cpuMsPerRequest?.lbRedis)} | ${l.serverRssMiB} |`
        );
      }),
    ),
  ];
  const stages = ["decode", "preprocess", "encode", "project", "prefill"];
  lines.push(
    "",
    "Where the servers' time went during each level: mean ms per run of each pipeline stage (`region_vqa_pipeline_stage_duration_seconds`; " +
      "under concurrency a stage's time includes waiting for its engine, e.g. prefill for the LLM's next batch). Generation is not a stage: " +
      "it is the rest of a request's latency.",
    "",
    `| setup | clients | ${stages.join(" ms | ")} ms |`,
    `|---|---|${stages.map(() => "---|").join("")}`,
    ...r.setups.flatMap((s) =>
      s.levels.map(
        (l) => `| ${s.label} | ${l.clients} | ${stages.map((st) => cell(l.stagesMs?.[st])).join(" | ")} |`,
      ),
    ),
  );
  if (r.rebuild.length) {
    lines.push(
      "",
      "**Follow-up on the owning replica (KV cache reused) vs. on the other one (rebuilt from Redis).** " +
        "Twin conversations (same image, region and previous turns) were started on one replica, the owner; the next " +
        "question went for one twin to the owner (timed; KV cache reused) and for the other twin to the other replica " +
        "(timed; it reads the transcript and the shared embeddings and prefills the history). " +
        `${o.repeats} conversation(s) per row; ms at the client, median / p90. The stage columns are the rebuilding replica's ` +
        "`region_vqa_pipeline_stage_duration_seconds` around each request (the `rebuild` stage includes its prefill); Redis reads: " +
        "transcript_get + feature_get round trips from `region_vqa_shared_state_command_duration_seconds`.",
      "",
      "| previous turns | conversations | prompt tokens | **owner, KV reused ms** | **other replica, rebuilt ms** | extra ms | `rebuild` stage ms | of which prefill ms | of which Redis reads ms | answers equal | counted reused / rebuilt |",
      "|---|---|---|---|---|---|---|---|---|---|---|",
      ...r.rebuild.map(
        (row) =>
          `| ${row.history} | ${row.conversations} | ${cell(row.promptTokens)} | **${spreadCell(row.ownerMs)}** | **${spreadCell(row.rebuiltMs)}** | ` +
          `${spreadCell(row.extraMs)} | ${spreadCell(row.rebuildStageMs)} | ${spreadCell(row.rebuildPrefillMs)} | ${spreadCell(row.rebuildRedisMs)} | ` +
          `${row.answersEqual}/${row.conversations} | ${row.kv.reused} / ${row.kv.rebuilt} |`,
      ),
    );
    const off = r.rebuild.reduce((a, row) => a + row.historyOffOwner, 0);
    if (off) lines.push("", `> ${off} history turn(s) were routed away from their conversation's replica.`);
  }
  if (r.failover) {
    const f = r.failover;
    lines.push(
      "",
      `**Failover (SIGKILL).** A conversation with ${f.history} previous turns on ${f.victim}; ${f.victim} killed with SIGKILL, ` +
        `then the next question at once through the load balancer: **${f.afterKill.ms} ms**, HTTP ${f.afterKill.status}, ` +
        `answered by ${f.afterKill.replica ?? "–"} (turn ${cell(f.afterKill.turns)}; rebuilt counter +${f.rebuilt}); ` +
        `the answer ${f.answerEqualsReference ? "equals" : "**differs from**"} that of a twin conversation (same image and history) answered by ${f.victim} before the kill. ` +
        `The question after that: ${f.next.ms} ms on ${f.next.replica ?? "–"} (its KV cache now local).`,
    );
  }
  const rd = r.redis;
  if (rd.perKind.length) {
    const order = ["feature_get", "feature_set", "transcript_get", "transcript_set", "transcript_delete"];
    const ops = order.filter((op) => rd.perKind.some((k) => k.commands[op] !== undefined));
    const pathMs = (k: (typeof rd.perKind)[number]): string => {
      let ms = 0;
      for (const [op, n] of Object.entries(k.commands)) {
        if (BLOCKING_OPS[op]) ms += n * (rd.idle[op]?.meanMs ?? 0);
      }
      return ms.toFixed(2);
    };
    lines.push(
      "",
      "**Redis commands per request** (from the replicas' `region_vqa_shared_state_command_duration_seconds_count`; first questions and " +
        "owner follow-ups sent one at a time straight to replica-1, rebuilt follow-ups from the rows above):",
      "",
      `| request kind | requests | counted as (kv, per request) | ${ops.join(" | ")} | commands | of which the answer waits for | their round trips, ms (idle means) |`,
      `|---|---|---|${ops.map(() => "---|").join("")}---|---|---|`,
      ...rd.perKind.map((k) => {
        const total = Object.values(k.commands).reduce((a, b) => a + b, 0);
        const blocking = Object.entries(k.commands)
          .filter(([op]) => BLOCKING_OPS[op])
          .reduce((a, [, n]) => a + n, 0);
        return `| ${k.kind} | ${k.requests} | ${count(k.kv ?? {})} | ${ops.map((op) => cell(k.commands[op] ?? 0)).join(" | ")} | ${round2(total)} | ${round2(blocking)} | ${pathMs(k)} |`;
      }),
    );
    const loads = r.setups.filter((s) => s.redisDuringLoad);
    const allOps = [
      ...new Set([...Object.keys(rd.idle), ...loads.flatMap((s) => Object.keys(s.redisDuringLoad!))]),
    ];
    const costCell = (c: OpCost | undefined): string => (c ? `${c.commands} / ${cell(c.meanMs)}` : "–");
    lines.push(
      "",
      "**Round trip per operation**, as the replica measures it (from before the ioredis call to its result: the event loop's delays " +
        "and, for embeddings, decoding included): commands / mean ms.",
      "",
      `| operation | what | idle cluster (sequential requests) | ${loads.map((s) => `under load: ${s.label}, all levels`).join(" | ")} |`,
      `|---|---|---|${loads.map(() => "---|").join("")}`,
      ...allOps.map(
        (op) =>
          `| ${op} | ${OP_MEANING[op] ?? ""} | ${costCell(rd.idle[op])} | ${loads.map((s) => costCell(s.redisDuringLoad![op])).join(" | ")} |`,
      ),
      "",
      `Stored values: region embeddings ${cell(rd.valueBytes.feature)} B on average (${rd.valueBytes.features} keys, fp16 + header), ` +
        `transcripts ${cell(rd.valueBytes.transcript)} B (${rd.valueBytes.transcripts} keys, JSON).`,
    );
    for (const b of rd.benchmarks) {
      lines.push(
        "",
        b.error
          ? `\`${b.command}\`: ${b.error}`
          : `\`${b.command}\` (same redis-server, idle cluster): ${b.results
              .map((x) => `${x.test} ${x.requestsPerSecond} req/s, p50 ${cell(x.p50Ms)} ms`)
              .join("; ")}.`,
      );
    }
  }
  return lines.join("\n");
}

const round2 = (v: number): string => String(Math.round(v * 100) / 100);

export function renderReport(report: BenchReport): string {
  const parts = [
    "## Benchmark results",
    "",
    `Machine: ${machineLine(report.machine, report.loadAverageAtEnd)}. Run ${report.startedAt} – ${report.finishedAt}.`,
    `Command: \`npm run bench -- ${report.args.join(" ")}\``,
    "",
    ...report.pipeline.map((p) => `${pipelineTable(p)}\n`),
    ...report.concurrency.map((c) => `${concurrencyTable(c)}\n`),
    ...(report.segmenter ?? []).map((s) => `${segmenterTable(s)}\n`),
    ...(report.classify ?? []).map((c) => `${classifyTable(c)}\n`),
    ...(report.cluster ?? []).map((c) => `${clusterTables(c)}\n`),
    ...report.external.map((e) => `### ${e.part} (\`${e.command}\`)\n\n${e.output.trim()}\n`),
    ...(report.failures.length
      ? ["### Failures", "", ...report.failures.map((f) => `- ${f.part} on ${f.model}: ${f.error}`), ""]
      : []),
  ];
  return parts.join("\n");
}
