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

/** Where an ONNX model may run. "auto" takes CUDA when its provider loads, else the CPU. */
export type OrtDevice = "auto" | "cuda" | "cpu";
/** The execution provider a session ended up on. */
export type OrtProvider = "cuda" | "cpu";

export const ORT_DEVICES: readonly OrtDevice[] = ["auto", "cuda", "cpu"];

/** A tensor as it crosses the worker boundary: typed data plus ONNX dims. */
export interface WireTensor {
  data: Float32Array | Int32Array | BigInt64Array;
  dims: number[];
}

export interface WireError {
  code: ErrorCode;
  message: string;
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
  /** Why "auto" did not get CUDA, when it did not. */
  fallbackReason?: string;
}

function sessionOptions(provider: OrtProvider, threads: number): ort.InferenceSession.SessionOptions {
  return {
    executionProviders: [provider],
    // A failed CUDA attempt under "auto" is expected on CPU hosts; it is reported once, by our logger.
    logSeverityLevel: provider === "cuda" ? 4 : 2,
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

/** Creates the session on the device asked for ("auto": CUDA when usable, else the CPU). */
export async function createOrtSession(spec: OrtSessionSpec): Promise<CreatedSession> {
  const where = typeof spec.model === "string" ? ` ${spec.model}` : "";
  const loadFailure = (err: unknown) =>
    new RegionVqaError(
      "model_invalid",
      `ONNX Runtime could not load the ${spec.label} model${where}: ${(err as Error).message}`,
    );
  let fallbackReason: string | undefined;
  if (spec.device !== "cpu") {
    const noCuda = cudaUnavailableReason();
    if (noCuda && spec.device === "cuda") throw cudaError(noCuda);
    if (noCuda) fallbackReason = noCuda;
    else {
      try {
        return { session: await open(spec, "cuda"), provider: "cuda" };
      } catch (err) {
        const message = (err as Error).message;
        if (spec.device === "cuda") throw modelFault(message) ? loadFailure(err) : cudaError(message);
        fallbackReason = message;
      }
    }
  }
  try {
    return { session: await open(spec, "cpu"), provider: "cpu", fallbackReason };
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

/** Errors cross the worker boundary as plain objects; unknown failures become `internal`. */
export function toWireError(err: unknown, label: string): WireError {
  if (err instanceof RegionVqaError) return { code: err.code, message: err.message };
  return {
    code: "internal",
    message: `${label} run failed: ${err instanceof Error ? err.message : String(err)}`,
  };
}

export function fromWireError(error: WireError): RegionVqaError {
  return new RegionVqaError(error.code, error.message);
}
