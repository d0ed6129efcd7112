/**
 * One ONNX Runtime session, created the same way for every model the project runs (vision encoder,
 * projector, fused graphs, and later ones): explicit thread counts, spinning off, one provider choice
 * with one error vocabulary. Used inside the worker host (`worker-host.ts`) and, for tiny models, on
 * the calling thread.
 */
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import * as ort from "onnxruntime-node";
import { RegionVqaError, type ErrorCode } from "../errors.js";
import { describeGpuDevice, isSoftwareDevice, preferredGpuDevice, probeGpuDevices } from "../gpu.js";

/**
 * Where an ONNX model may run. "auto" takes CUDA when its provider loads, else WebGPU on a hardware
 * adapter, else the CPU: it never picks a software adapter, which an explicit "webgpu" may use.
 */
export type OrtDevice = "auto" | "webgpu" | "cuda" | "cpu";
/** The execution provider a session ended up on. */
export type OrtProvider = "cuda" | "webgpu" | "cpu";

export const ORT_DEVICES: readonly OrtDevice[] = ["auto", "webgpu", "cuda", "cpu"];

/** A tensor as it crosses the worker boundary: typed data plus ONNX dims. */
export interface WireTensor {
  data: Float32Array | Int32Array | BigInt64Array;
  dims: number[];
}

export interface WireError {
  code: ErrorCode;
  message: string;
  /** A run named resident tensors that are gone (see `OnnxSession.keep`). */
  residentMissing?: boolean;
}

export interface OrtSessionSpec {
  /** A model file path, or the encoded model bytes. */
  model: string | Uint8Array;
  device: OrtDevice;
  /** Intra-op threads. */
  threads: number;
  /** What the model is, for messages ("vision encoder", "projector"). */
  label: string;
}

export interface CreatedSession {
  session: ort.InferenceSession;
  provider: OrtProvider;
  /** WebGPU: the adapter it runs on (as the Vulkan device probe names it). */
  adapter?: string;
  /** Why "auto" did not get a GPU, when it did not. */
  fallbackReason?: string;
}

function sessionOptions(provider: OrtProvider, threads: number): ort.InferenceSession.SessionOptions {
  return {
    executionProviders: [provider],
    // A failed CUDA attempt under "auto" is expected on CPU hosts, and WebGPU warns that shape ops stay
    // on the CPU (by design): our logger reports what matters, once.
    logSeverityLevel: provider === "cpu" ? 2 : provider === "webgpu" ? 3 : 4,
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
    graphOptimizationLevel: "all",
    // Spin-waiting pools starve llama.cpp on a small shared CPU (docs/reference.md section 4).
    extra: { session: { intra_op: { allow_spinning: "0" }, inter_op: { allow_spinning: "0" } } },
  };
}

/**
 * Why CUDA cannot work, or undefined when it may. ONNX Runtime loads its CUDA provider from
 * libonnxruntime_providers_cuda.so beside its binding; the npm package does not ship it, and trying
 * anyway prints a scary native error, so look first.
 */
export function cudaUnavailableReason(): string | undefined {
  const bindingDir = path.join(
    path.dirname(createRequire(import.meta.url).resolve("onnxruntime-node")),
    "..",
    "bin",
    "napi-v6",
    process.platform,
    process.arch,
  );
  const lib =
    process.platform === "win32" ? "onnxruntime_providers_cuda.dll" : "libonnxruntime_providers_cuda.so";
  if (!existsSync(path.join(bindingDir, lib)))
    return `${lib} is not installed beside the ONNX Runtime binding (${bindingDir})`;
  return undefined;
}

function cudaError(reason: string): RegionVqaError {
  return new RegionVqaError(
    "device_unavailable",
    `CUDA was requested but ONNX Runtime cannot use it here: ${reason}. The npm package ships only the CPU provider; ` +
      "CUDA needs libonnxruntime_providers_{shared,cuda}.so of the same ONNX Runtime version plus the CUDA and cuDNN libraries. Use device cpu or auto.",
  );
}

/** A model that fails the same way on every provider is the model's fault, not the provider's. */
const modelFault = (message: string) =>
  /protobuf|invalid model|load model|no such file|ENOENT/i.test(message) && !/provider|cuda/i.test(message);

function open(spec: OrtSessionSpec, provider: OrtProvider): Promise<ort.InferenceSession> {
  const options = sessionOptions(provider, spec.threads);
  return typeof spec.model === "string"
    ? ort.InferenceSession.create(spec.model, options)
    : ort.InferenceSession.create(spec.model, options);
}

function webGpuError(reason: string): RegionVqaError {
  return new RegionVqaError(
    "device_unavailable",
    `WebGPU was requested but ONNX Runtime cannot use it here: ${reason}. On Linux it needs a Vulkan driver ` +
      "(the GPU vendor's, or Mesa's; Mesa's software lavapipe works for testing). Use device cpu or auto.",
  );
}

export interface AutoDevicePlan {
  /** GPU providers "auto" tries, in order, before the CPU. */
  candidates: Array<{ provider: Exclude<OrtProvider, "cpu">; adapter?: string }>;
  /** Why the others are not tried. */
  skipped: string[];
}

/** What "auto" will try on this host: CUDA when its provider is installed, WebGPU on a hardware adapter. */
export function planAutoDevice(): AutoDevicePlan {
  const plan: AutoDevicePlan = { candidates: [], skipped: [] };
  const noCuda = cudaUnavailableReason();
  if (noCuda) plan.skipped.push(`CUDA unavailable: ${noCuda}`);
  else plan.candidates.push({ provider: "cuda" });
  const probe = probeGpuDevices();
  const best = preferredGpuDevice(probe.devices);
  if (best && !isSoftwareDevice(best)) plan.candidates.push({ provider: "webgpu", adapter: best.name });
  else if (best)
    plan.skipped.push(`WebGPU: the only adapter is ${describeGpuDevice(best)} (auto never picks one)`);
  else plan.skipped.push(`WebGPU: no adapter${probe.reason ? ` (${probe.reason})` : ""}`);
  return plan;
}

/** Creates the session on the device asked for (see `OrtDevice`). */
export async function createOrtSession(spec: OrtSessionSpec): Promise<CreatedSession> {
  const where = typeof spec.model === "string" ? ` ${spec.model}` : "";
  const loadFailure = (err: unknown) =>
    new RegionVqaError(
      "model_invalid",
      `ONNX Runtime could not load the ${spec.label} model${where}: ${(err as Error).message}`,
    );
  const providerFault = (err: unknown, fail: (reason: string) => RegionVqaError) => {
    const message = (err as Error).message;
    return modelFault(message) ? loadFailure(err) : fail(message.split("\n")[0]);
  };
  if (spec.device === "cuda") {
    const noCuda = cudaUnavailableReason();
    if (noCuda) throw cudaError(noCuda);
    try {
      return { session: await open(spec, "cuda"), provider: "cuda" };
    } catch (err) {
      throw providerFault(err, cudaError);
    }
  }
  if (spec.device === "webgpu") {
    const adapter = preferredGpuDevice(probeGpuDevices().devices)?.name;
    try {
      return { session: await open(spec, "webgpu"), provider: "webgpu", adapter };
    } catch (err) {
      throw providerFault(err, webGpuError);
    }
  }
  const skipped: string[] = [];
  if (spec.device === "auto") {
    const plan = planAutoDevice();
    skipped.push(...plan.skipped);
    for (const { provider, adapter } of plan.candidates) {
      try {
        return { session: await open(spec, provider), provider, adapter };
      } catch (err) {
        skipped.push(
          `${provider} failed${adapter ? ` on ${adapter}` : ""}: ${(err as Error).message.split("\n")[0]}`,
        );
      }
    }
  }
  try {
    return {
      session: await open(spec, "cpu"),
      provider: "cpu",
      fallbackReason: skipped.length > 0 ? skipped.join("; ") : undefined,
    };
  } catch (err) {
    throw loadFailure(err);
  }
}

/** One run; outputs are copied out of ONNX Runtime's buffers (which are released) so they can move. */
export async function runOrtSession(
  session: ort.InferenceSession,
  inputs: Record<string, WireTensor>,
): Promise<Record<string, WireTensor>> {
  const feeds: Record<string, ort.Tensor> = {};
  for (const [name, t] of Object.entries(inputs)) feeds[name] = new ort.Tensor(t.data, t.dims);
  const results = await session.run(feeds);
  const outputs: Record<string, WireTensor> = {};
  for (const [name, value] of Object.entries(results)) {
    outputs[name] = { data: copyTyped(value.data), dims: value.dims.slice() };
    value.dispose();
  }
  return outputs;
}

function copyTyped(data: ort.Tensor["data"]): WireTensor["data"] {
  if (data instanceof Float32Array) return new Float32Array(data);
  if (data instanceof Int32Array) return new Int32Array(data);
  if (data instanceof BigInt64Array) return new BigInt64Array(data);
  throw new RegionVqaError("model_invalid", "the model has an output that is not float32, int32 or int64");
}

/** The error of a run naming resident tensors the session no longer holds (the owner re-sends them). */
export function residentMissing(label: string, key: string): WireError {
  return { code: "internal", message: `${label}: no resident tensors "${key}"`, residentMissing: true };
}

/** Errors cross the worker boundary as plain objects; unknown failures become `internal`. */
export function toWireError(err: unknown, label: string): WireError {
  if (err instanceof RegionVqaError) return { code: err.code, message: err.message };
  return {
    code: "internal",
    message: `${label} run failed: ${err instanceof Error ? err.message : String(err)}`,
  };
}

/** What a GPU says when it is gone or out of memory (Dawn, Vulkan, CUDA). */
const DEVICE_FAILURE =
  /device (?:is |was )?lost|devicelost|out of memory|\boom\b|VK_ERROR_|cuda ?error|cudaError|CUBLAS_STATUS/i;

/**
 * A failed run's error: on a GPU, a lost device or exhausted GPU memory is `device_failed` (the
 * server answers 503: not the request's fault); everything else stays `internal`.
 */
export function runError(err: unknown, provider: OrtProvider, label: string): WireError {
  const wire = toWireError(err, label);
  if (wire.code === "internal" && provider !== "cpu" && DEVICE_FAILURE.test(wire.message)) {
    return { code: "device_failed", message: `${label}: the ${provider} device failed: ${wire.message}` };
  }
  return wire;
}

export function fromWireError(error: WireError): RegionVqaError {
  return new RegionVqaError(
    error.code,
    error.message,
    error.residentMissing ? { residentMissing: true } : undefined,
  );
}
