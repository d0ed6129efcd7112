/**
 * Per-stage timings of the composed pipeline (src/pipeline) in three situations:
 *   - cold: empty vision cache; a new conversation about a new image: decode -> preprocess -> encode ->
 *     project -> prefill (system prompt + image rows) -> question -> answer,
 *   - warm: the same image and region again in a new conversation: the vision cache answers, so the
 *     encoder and projector must not run (the cache hit counter is reported),
 *   - follow-up: a second question in the warm conversation: only the new turn is evaluated.
 * Time to first token (TTFT) is measured from the image bytes for cold and warm (what a client of a
 * first question waits), and from the question for the follow-up.
 */
import { isSoftwareDevice, probeGpuDevices } from "../src/common/gpu.js";
import type { OrtDevice } from "../src/common/ort/index.js";
import type { LlmGpu } from "../src/llm/index.js";
import { createPipeline, type LocalRegionVqaPipeline, type PipelineStage } from "../src/pipeline/index.js";
import type { Conversation, GenerationOptions } from "../src/pipeline/index.js";
import { benchImage, type BenchImage } from "./images.js";
import { pipelineOptionsFor, type BenchModelSet } from "./model-sets.js";
import { median, round } from "./stats.js";

export interface PipelineBenchOptions {
  repeats: number;
  maxTokens: number;
  visionThreads: number;
  llmThreads: number;
  device: OrtDevice;
  gpu: LlmGpu;
  contextSize: number;
}

export type ScenarioName = "cold" | "warm" | "follow-up";

const STAGES: PipelineStage[] = ["decode", "preprocess", "encode", "project", "prefill"];

/** One scenario's medians over the repeats (ms unless named otherwise). */
export interface ScenarioResult {
  scenario: ScenarioName;
  runs: number;
  stagesMs: Record<PipelineStage, number | null>;
  /** How many runs ran the encoder (0 for warm and follow-up when the cache works). */
  encoderRuns: number;
  /** Time to first token: from the image bytes (cold, warm) or from the question (follow-up). */
  ttftMs: number | null;
  /** From `ask()` to the first answer piece: question prefill + first token. */
  questionTtftMs: number | null;
  totalMs: number | null;
  decodeTokensPerSecond: number | null;
  completionTokens: number | null;
  /**
   * Prompt tokens llama.cpp evaluated for the question (the rest was in the KV cache). A follow-up
   * evaluates its own turn plus whatever of the previous answer differs from that answer's text
   * tokenised again (always its last sampled token; with random weights, often much more).
   */
  evaluatedPromptTokens: number | null;
  /** Vision-cache counters over all runs of this scenario. */
  cacheHits: number;
  cacheMisses: number;
}

export interface PipelineBenchResult {
  models: {
    set: string;
    requested: string;
    description: string;
    note?: string;
    vision: string;
    projector?: string;
    llm: string;
  };
  options: PipelineBenchOptions;
  /** Where the stages ran (`pipeline.models.devices`), and whether a GPU was a software one. */
  devices?: { vision: string; llm: string; softwareAdapter: boolean };
  loadMs: number | null;
  /** First request after loading (ORT plans memory, llama.cpp warms up); not in the scenarios. */
  warmupMs: number | null;
  scenarios: ScenarioResult[];
  /** Follow-up TTFT / cold first-question TTFT (both end to end). Target <= 0.10 on full-size models. */
  followUpOverColdTtft: number | null;
  /** Follow-up TTFT / warm first-question TTFT (image embeddings cached, prefill not). */
  followUpOverWarmTtft: number | null;
  peakRssMiB: number;
}

interface RunSample {
  stages: Partial<Record<PipelineStage, number>>;
  ttftMs: number;
  questionTtftMs: number;
  totalMs: number;
  decodeTokensPerSecond: number;
  completionTokens: number;
  evaluatedPromptTokens: number;
  cacheHits: number;
  cacheMisses: number;
}

/** Asks and times one answer: TTFT to the first piece, decode rate over the pieces after it. */
async function timedAnswer(
  conversation: Conversation,
  question: string,
  generation: GenerationOptions,
): Promise<{
  ttftMs: number;
  totalMs: number;
  decodeTokensPerSecond: number;
  completionTokens: number;
  evaluatedPromptTokens: number;
}> {
  const t0 = performance.now();
  let first: number | undefined;
  const stream = conversation.ask(question, generation);
  for await (const piece of stream) {
    if (first === undefined && piece.length > 0) first = performance.now();
  }
  const result = await stream.result;
  const end = performance.now();
  first ??= end;
  const decodeSeconds = (end - first) / 1000;
  return {
    ttftMs: first - t0,
    totalMs: end - t0,
    decodeTokensPerSecond:
      result.completionTokens > 1 && decodeSeconds > 0 ? (result.completionTokens - 1) / decodeSeconds : NaN,
    completionTokens: result.completionTokens,
    // The LLM stage's result carries this beyond the pipeline's AnswerResult type.
    evaluatedPromptTokens: (result as { evaluatedPromptTokens?: number }).evaluatedPromptTokens ?? NaN,
  };
}

class StageRecorder {
  current: Partial<Record<PipelineStage, number>> = {};
  record = (stage: PipelineStage, ms: number): void => {
    this.current[stage] = (this.current[stage] ?? 0) + ms;
  };
  take(): Partial<Record<PipelineStage, number>> {
    const out = this.current;
    this.current = {};
    return out;
  }
}

function summarise(scenario: ScenarioName, samples: RunSample[]): ScenarioResult {
  const stat = (pick: (s: RunSample) => number, digits = 1) => round(median(samples.map(pick)), digits);
  const stagesMs = Object.fromEntries(
    STAGES.map((stage) => {
      const present = samples.filter((s) => s.stages[stage] !== undefined);
      return [stage, present.length ? round(median(present.map((s) => s.stages[stage]!)), 1) : null];
    }),
  ) as Record<PipelineStage, number | null>;
  return {
    scenario,
    runs: samples.length,
    stagesMs,
    encoderRuns: samples.filter((s) => s.stages.encode !== undefined).length,
    ttftMs: stat((s) => s.ttftMs),
    questionTtftMs: stat((s) => s.questionTtftMs),
    totalMs: stat((s) => s.totalMs),
    decodeTokensPerSecond: stat((s) => s.decodeTokensPerSecond),
    completionTokens: stat((s) => s.completionTokens, 0),
    evaluatedPromptTokens: stat((s) => s.evaluatedPromptTokens, 0),
    cacheHits: samples.reduce((a, s) => a + s.cacheHits, 0),
    cacheMisses: samples.reduce((a, s) => a + s.cacheMisses, 0),
  };
}

/** Opens a conversation about `image` and asks `question`, timing everything from the bytes. */
async function firstQuestion(
  pipeline: LocalRegionVqaPipeline,
  recorder: StageRecorder,
  image: BenchImage,
  question: string,
  generation: GenerationOptions,
): Promise<{ sample: RunSample; conversation: Conversation }> {
  const before = pipeline.stats().cache;
  recorder.take();
  const t0 = performance.now();
  const conversation = await pipeline.openConversation(image.png, { kind: "box", box: image.box });
  const opened = performance.now() - t0;
  const answer = await timedAnswer(conversation, question, generation);
  const after = pipeline.stats().cache;
  return {
    conversation,
    sample: {
      stages: recorder.take(),
      ttftMs: opened + answer.ttftMs,
      questionTtftMs: answer.ttftMs,
      totalMs: opened + answer.totalMs,
      decodeTokensPerSecond: answer.decodeTokensPerSecond,
      completionTokens: answer.completionTokens,
      evaluatedPromptTokens: answer.evaluatedPromptTokens,
      cacheHits: after.hits - before.hits,
      cacheMisses: after.misses - before.misses,
    },
  };
}

export async function runPipelineBench(
  models: BenchModelSet,
  options: PipelineBenchOptions,
  log: (message: string) => void,
): Promise<PipelineBenchResult> {
  const recorder = new StageRecorder();
  const generation: GenerationOptions = { maxTokens: options.maxTokens, temperature: 0 };
  const t0 = performance.now();
  const pipeline = await createPipeline({
    ...pipelineOptionsFor(models, options),
    maxConversations: 2,
    onStage: recorder.record,
  });
  const loadMs = performance.now() - t0;
  log(`pipeline (${models.name}) loaded in ${(loadMs / 1000).toFixed(1)} s`);
  const software = probeGpuDevices()
    .devices.filter(isSoftwareDevice)
    .map((d) => d.name);
  const devices = {
    ...pipeline.models.devices,
    softwareAdapter: software.some((name) => pipeline.models.devices.vision.includes(name)),
  };
  const samples: Record<ScenarioName, RunSample[]> = { cold: [], warm: [], "follow-up": [] };
  let warmupMs = NaN;
  try {
    // Warm-up on an image of its own, so that the measured cold runs are "empty cache", not "first run".
    const w = await firstQuestion(pipeline, recorder, await benchImage(9999), models.question, {
      ...generation,
      maxTokens: 4,
    });
    warmupMs = w.sample.totalMs;
    await w.conversation.dispose();
    for (let r = 0; r < options.repeats; r++) {
      const image = await benchImage(r);
      pipeline.clearVisionCache();
      const cold = await firstQuestion(pipeline, recorder, image, models.question, generation);
      samples.cold.push(cold.sample);
      await cold.conversation.dispose();

      const warm = await firstQuestion(pipeline, recorder, image, models.question, generation);
      samples.warm.push(warm.sample);
      try {
        const before = pipeline.stats().cache;
        recorder.take();
        const answer = await timedAnswer(warm.conversation, models.followUp, generation);
        const after = pipeline.stats().cache;
        samples["follow-up"].push({
          stages: recorder.take(),
          ttftMs: answer.ttftMs,
          questionTtftMs: answer.ttftMs,
          totalMs: answer.totalMs,
          decodeTokensPerSecond: answer.decodeTokensPerSecond,
          completionTokens: answer.completionTokens,
          evaluatedPromptTokens: answer.evaluatedPromptTokens,
          cacheHits: after.hits - before.hits,
          cacheMisses: after.misses - before.misses,
        });
      } finally {
        await warm.conversation.dispose();
      }
      log(
        `  run ${r + 1}/${options.repeats}: cold TTFT ${cold.sample.ttftMs.toFixed(0)} ms, warm ${warm.sample.ttftMs.toFixed(0)} ms, ` +
          `follow-up ${samples["follow-up"].at(-1)!.ttftMs.toFixed(0)} ms`,
      );
    }
  } finally {
    await pipeline.dispose();
  }
  const scenarios = (["cold", "warm", "follow-up"] as const).map((s) => summarise(s, samples[s]));
  const [cold, warm, followUp] = scenarios;
  const ratio = (a: number | null, b: number | null) => (a !== null && b ? round(a / b, 3) : null);
  return {
    models: {
      set: models.name,
      requested: models.requested,
      description: models.description,
      note: models.note,
      vision: models.vision,
      projector: models.projector,
      llm: models.llm,
    },
    options,
    devices,
    loadMs: round(loadMs, 0),
    warmupMs: round(warmupMs, 0),
    scenarios,
    followUpOverColdTtft: ratio(followUp.ttftMs, cold.ttftMs),
    followUpOverWarmTtft: ratio(followUp.ttftMs, warm.ttftMs),
    peakRssMiB: Math.round(process.resourceUsage().maxRSS / 1024),
  };
}
