/**
 * One ONNX Runtime session with one float32 input and one float32 output, created with explicit thread
 * counts and spinning off (a 2-core machine shared with llama.cpp punishes spin-waiting pools). Used
 * directly for small models and from `projector-worker.ts` for big ones.
 */
import * as ort from "onnxruntime-node";
import { RegionVqaError, type ErrorCode } from "../common/errors.js";

export type ProjectorDevice = "cpu" | "cuda";

export interface OrtSessionOptions {
  threads?: number;
  device?: ProjectorDevice;
}

export interface SimpleSession {
  inputName: string;
  outputName: string;
  run(data: Float32Array, dims: number[]): Promise<{ data: Float32Array; dims: number[] }>;
  release(): Promise<void>;
}

export async function createSimpleSession(
  model: string | Uint8Array,
  options: OrtSessionOptions = {},
): Promise<SimpleSession> {
  const threads = Math.max(1, Math.floor(options.threads ?? 1));
  const device = options.device ?? "cpu";
  const sessionOptions: ort.InferenceSession.SessionOptions = {
    executionProviders: device === "cuda" ? ["cuda", "cpu"] : ["cpu"],
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
    graphOptimizationLevel: "all",
    extra: { session: { intra_op: { allow_spinning: "0" }, inter_op: { allow_spinning: "0" } } },
  };
  let session: ort.InferenceSession;
  try {
    session =
      typeof model === "string"
        ? await ort.InferenceSession.create(model, sessionOptions)
        : await ort.InferenceSession.create(model, sessionOptions);
  } catch (err) {
    const message = (err as Error).message;
    const code: ErrorCode =
      device === "cuda" && /cuda|provider/i.test(message) ? "device_unavailable" : "model_invalid";
    throw new RegionVqaError(
      code,
      code === "device_unavailable"
        ? `ONNX Runtime cannot use CUDA here: ${message}`
        : `ONNX Runtime could not load the projector model: ${message}`,
    );
  }
  if (session.inputNames.length !== 1 || session.outputNames.length !== 1) {
    throw new RegionVqaError("model_invalid", "projector model must have exactly one input and one output");
  }
  const inputName = session.inputNames[0];
  const outputName = session.outputNames[0];
  return {
    inputName,
    outputName,
    async run(data, dims) {
      const result = await session.run({ [inputName]: new ort.Tensor("float32", data, dims) });
      const out = result[outputName];
      const values = out.data as Float32Array;
      const copy = new Float32Array(values);
      out.dispose();
      return { data: copy, dims: out.dims.slice() };
    },
    release: () => session.release(),
  };
}

/** Errors cross the worker boundary as plain objects; rebuild the typed error on the other side. */
export function serializeError(err: unknown): { code: ErrorCode; message: string } {
  if (err instanceof RegionVqaError) return { code: err.code, message: err.message };
  return { code: "internal", message: err instanceof Error ? err.message : String(err) };
}
