/**
 * The Node part of scripts/gpu-check.sh: the same image and region through the Alpha-CLIP encoder on
 * the CPU, on WebGPU and (when ONNX Runtime's CUDA provider is installed) on CUDA, features compared
 * with the CPU's and each device timed; then one question through the whole pipeline with both stages
 * on `auto`, and (when llama.cpp's Vulkan build finds a GPU) with the LLM on Vulkan. Prints a JSON
 * summary last; exit code 1 when a check failed.
 */
import { readFile } from "node:fs/promises";
import path from "node:path";
import { cudaUnavailableReason, type OrtDevice } from "../src/common/ort/index.js";
import { maxAbsDiff } from "../src/common/tensor.js";
import type { LlmGpu } from "../src/llm/index.js";
import { resolveModelOptions } from "../src/models/index.js";
import { createPipeline } from "../src/pipeline/index.js";
import { AlphaClipEncoder, decodeImage, preprocessForLlava, regionToMask } from "../src/vision/index.js";

const args = process.argv.slice(2);
const modelFlag = args.indexOf("--model");
const models = await resolveModelOptions({ preset: modelFlag >= 0 ? args[modelFlag + 1] : undefined });
const imagePath = path.resolve("examples/shapes.png");
const bytes = new Uint8Array(await readFile(imagePath));
const image = await decodeImage(bytes);
const mask = regionToMask(
  { kind: "box", box: [0, 0, Math.ceil(image.width / 2), Math.ceil(image.height / 2)] },
  image.width,
  image.height,
);
const summary: Record<string, unknown> = { vision: models.vision, llm: models.llm };
let failed = false;

async function timeEncoder(
  device: OrtDevice,
): Promise<{ features: Float32Array; ms: number[]; adapter?: string }> {
  const encoder = await AlphaClipEncoder.load(models.vision, { device, logger: { info: console.error } });
  try {
    const input = preprocessForLlava(image, mask, encoder.imageSize);
    const ms: number[] = [];
    let features: Float32Array = new Float32Array();
    for (let i = 0; i < 6; i++) {
      const t0 = performance.now();
      const out = await encoder.encode(input);
      ms.push(performance.now() - t0);
      features = (out.features ?? out.projected)!.data;
    }
    // The first run compiles kernels (shaders on WebGPU): reported apart from the others' median.
    const [first, ...rest] = ms;
    return { features, ms: [first, ...rest.sort((a, b) => a - b)], adapter: encoder.adapter };
  } finally {
    await encoder.dispose();
  }
}

const cpu = await timeEncoder("cpu");
summary.encoder = { cpu: { firstMs: cpu.ms[0], medianMs: cpu.ms[3] } };
const noCuda = cudaUnavailableReason();
const gpuDevices: OrtDevice[] = ["webgpu", ...(noCuda ? [] : ["cuda" as const])];
if (noCuda) summary.cudaProvider = noCuda;
for (const device of gpuDevices) {
  try {
    const run = await timeEncoder(device);
    const diff = maxAbsDiff(cpu.features, run.features);
    // GPU kernels (TF32, fused ops) differ from the CPU's in the last bits; 1e-2 on ViT features is a
    // real mismatch.
    (summary.encoder as Record<string, unknown>)[device] = {
      adapter: run.adapter,
      firstMs: run.ms[0],
      medianMs: run.ms[3],
      maxAbsDiffVsCpu: diff,
    };
    if (!(diff < 1e-2)) failed = true;
  } catch (err) {
    (summary.encoder as Record<string, unknown>)[device] = { error: (err as Error).message };
    failed = true;
  }
}

async function answer(gpu: LlmGpu): Promise<Record<string, unknown>> {
  const t0 = performance.now();
  const pipeline = await createPipeline({ ...models, device: "auto", gpu, maxConversations: 1 });
  const loadMs = performance.now() - t0;
  try {
    const conversation = await pipeline.openConversation(bytes, { kind: "mask", mask });
    const t1 = performance.now();
    const result = await conversation.ask("What colour is the highlighted region?", {
      temperature: 0,
      maxTokens: 32,
    }).result;
    const seconds = (performance.now() - t1) / 1000;
    return {
      devices: pipeline.models.devices,
      loadMs,
      answer: result.text,
      answerMs: seconds * 1000,
      tokensPerSecond: result.completionTokens / seconds,
    };
  } finally {
    await pipeline.dispose();
  }
}

try {
  summary.endToEnd = await answer("auto");
} catch (err) {
  summary.endToEndError = (err as Error).message;
  failed = true;
}

console.log(JSON.stringify(summary, null, 2));
process.exitCode = failed ? 1 : 0;
