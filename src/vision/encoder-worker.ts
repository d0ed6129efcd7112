/**
 * Worker thread owning the Alpha-CLIP encoder's ONNX Runtime session: session creation and runs block
 * their thread for seconds with a ViT-L, so they must not run on the main event loop.
 *
 * Protocol. workerData: { modelPath, device: "auto" | "cuda" | "cpu", threads }.
 * The worker posts { type: "ready", provider, fallbackReason?, inputNames, outputNames } or
 * { type: "error", error }. Then each { id, inputs: { name: { data, dims } } } is answered, strictly in
 * arrival order (one run at a time), by { id, outputs: { name: { data, dims } } } or { id, error }.
 * { type: "close" } drops queued runs, lets the current one finish, releases the session and ends the
 * worker.
 */
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { parentPort, workerData } from "node:worker_threads";
import * as ort from "onnxruntime-node";
import { RegionVqaError, type ErrorCode } from "../common/errors.js";

export type EncoderDevice = "auto" | "cuda" | "cpu";

export interface EncoderWorkerInit {
  modelPath: string;
  device: EncoderDevice;
  threads: number;
}

export interface WireTensor {
  data: Float32Array;
  dims: number[];
}

export interface WireError {
  code: ErrorCode;
  message: string;
}

function sessionOptions(provider: "cuda" | "cpu", threads: number): ort.InferenceSession.SessionOptions {
  return {
    executionProviders: [provider],
    // A failed CUDA attempt under "auto" is expected on CPU hosts; it is reported once, by our logger.
    logSeverityLevel: provider === "cuda" ? 4 : 2,
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
    graphOptimizationLevel: "all",
    // Spin-waiting pools starve llama.cpp on a shared small CPU.
    extra: { session: { intra_op: { allow_spinning: "0" }, inter_op: { allow_spinning: "0" } } },
  };
}

/**
 * Why CUDA cannot work, or undefined when it may. ONNX Runtime loads its CUDA provider from
 * libonnxruntime_providers_cuda.so beside its binding; the npm package does not ship it, and trying
 * anyway prints a scary native error, so look first.
 */
function cudaUnavailableReason(): string | undefined {
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

async function createSession(
  init: EncoderWorkerInit,
): Promise<{ session: ort.InferenceSession; provider: "cuda" | "cpu"; fallbackReason?: string }> {
  const loadFailure = (err: unknown) =>
    new RegionVqaError(
      "model_invalid",
      `ONNX Runtime could not load the vision model ${init.modelPath}: ${(err as Error).message}`,
    );
  let fallbackReason: string | undefined;
  const noCuda = init.device === "cpu" ? undefined : cudaUnavailableReason();
  if (noCuda && init.device === "cuda") throw cudaError(noCuda);
  if (noCuda) fallbackReason = noCuda;
  else if (init.device === "cuda" || init.device === "auto") {
    try {
      return {
        session: await ort.InferenceSession.create(init.modelPath, sessionOptions("cuda", init.threads)),
        provider: "cuda",
      };
    } catch (err) {
      const message = (err as Error).message;
      if (init.device === "cuda") {
        // A broken model fails the same way on every provider; everything else is the provider's fault.
        if (
          /protobuf|invalid model|load model|no such file|ENOENT/i.test(message) &&
          !/provider|cuda/i.test(message)
        ) {
          throw loadFailure(err);
        }
        throw cudaError(message);
      }
      fallbackReason = message;
    }
  }
  try {
    return {
      session: await ort.InferenceSession.create(init.modelPath, sessionOptions("cpu", init.threads)),
      provider: "cpu",
      fallbackReason,
    };
  } catch (err) {
    throw loadFailure(err);
  }
}

function cudaError(reason: string): RegionVqaError {
  return new RegionVqaError(
    "device_unavailable",
    `CUDA was requested but ONNX Runtime cannot use it here: ${reason}. The npm package ships only the CPU provider; ` +
      "CUDA needs libonnxruntime_providers_{shared,cuda}.so of the same ONNX Runtime version plus the CUDA and cuDNN libraries. Use device cpu or auto.",
  );
}

function toWireError(err: unknown): WireError {
  if (err instanceof RegionVqaError) return { code: err.code, message: err.message };
  return {
    code: "internal",
    message: `vision encoder run failed: ${err instanceof Error ? err.message : String(err)}`,
  };
}

const port = parentPort;
if (!port) throw new Error("encoder-worker must run as a worker thread");
const init = workerData as EncoderWorkerInit;
let session: ort.InferenceSession | undefined;
// Runs are chained so that they execute one at a time, in the order requests arrived.
let queue: Promise<void> = Promise.resolve();

const ready = createSession(init).then(
  (created) => {
    session = created.session;
    port.postMessage({
      type: "ready",
      provider: created.provider,
      fallbackReason: created.fallbackReason,
      inputNames: session.inputNames.slice(),
      outputNames: session.outputNames.slice(),
    });
  },
  (err: unknown) => {
    port.postMessage({ type: "error", error: toWireError(err) });
  },
);

let closing = false;

async function run(id: number, inputs: Record<string, WireTensor>): Promise<void> {
  await ready;
  // Runs queued behind a close are dropped (the owner has already rejected them).
  if (closing) return;
  if (!session) throw new RegionVqaError("internal", "vision encoder session is not available");
  const feeds: Record<string, ort.Tensor> = {};
  for (const [name, t] of Object.entries(inputs)) feeds[name] = new ort.Tensor("float32", t.data, t.dims);
  const results = await session.run(feeds);
  const outputs: Record<string, WireTensor> = {};
  const transfer: ArrayBuffer[] = [];
  for (const [name, value] of Object.entries(results)) {
    // Copy out of ORT's buffer so it can be released and the copy transferred without cloning.
    const data = new Float32Array(value.data as Float32Array);
    outputs[name] = { data, dims: value.dims.slice() };
    transfer.push(data.buffer as ArrayBuffer);
    value.dispose();
  }
  port!.postMessage({ id, outputs }, transfer);
}

port.on("message", (msg: { type?: string; id?: number; inputs?: Record<string, WireTensor> }) => {
  if (msg.type === "close") {
    closing = true;
    // After the run in progress (never terminate under a native run: onnxruntime-node aborts the
    // whole process when a run completes in a torn-down worker).
    queue = queue.then(async () => {
      await ready;
      await session?.release();
      session = undefined;
      port.close();
    });
    return;
  }
  const id = msg.id!;
  queue = queue.then(() =>
    run(id, msg.inputs ?? {}).catch((err: unknown) => port.postMessage({ id, error: toWireError(err) })),
  );
});
