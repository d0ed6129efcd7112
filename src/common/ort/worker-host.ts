/**
 * The worker thread that owns one ONNX Runtime session (protocol in `protocol.ts`). Session creation
 * and runs block their thread for seconds with a ViT-L, so they must not run on the main event loop.
 */
import os from "node:os";
import { parentPort, workerData } from "node:worker_threads";
import type * as ort from "onnxruntime-node";
import type { HostMessage, OwnerMessage } from "./protocol.js";
import {
  createOrtSession,
  residentMissing,
  runError,
  runOrtSession,
  toWireError,
  type OrtProvider,
  type OrtSessionSpec,
  type WireTensor,
} from "./session.js";

const MODEL_THREAD_NICE = 10;
const port = parentPort;
if (!port) throw new Error("worker-host must run as a worker thread");
// Below the event loop's priority (Linux: per thread, inherited by ONNX Runtime's pool threads made
// from here): with every core busy, the thread that answers requests and streams is scheduled first.
try {
  os.setPriority(0, Math.max(os.getPriority(0), MODEL_THREAD_NICE));
} catch {
  // Not permitted here: the session runs at the process's priority.
}
const spec = workerData as OrtSessionSpec;
const post = (message: HostMessage, transfer: ArrayBuffer[] = []) => port.postMessage(message, transfer);

let session: ort.InferenceSession | undefined;
let provider: OrtProvider = "cpu";
let closing = false;
// Runs are chained so that they execute one at a time, in the order they arrived.
let queue: Promise<void> = Promise.resolve();
/** Tensors kept for later runs, by key (protocol.ts). */
const resident = new Map<string, Record<string, WireTensor>>();

const ready = createOrtSession(spec).then(
  (created) => {
    session = created.session;
    provider = created.provider;
    post({
      type: "ready",
      provider: created.provider,
      adapter: created.adapter,
      fallbackReason: created.fallbackReason,
      inputNames: session.inputNames.slice(),
      outputNames: session.outputNames.slice(),
    });
  },
  (err: unknown) => {
    post({ type: "load-error", error: toWireError(err, spec.label) });
    closing = true;
    port.close();
  },
);

async function run(id: number, inputs: Record<string, WireTensor>, key?: string): Promise<void> {
  await ready;
  // Runs queued behind a close are dropped (the owner has already rejected them).
  if (closing || !session) return;
  const kept = key === undefined ? {} : resident.get(key);
  if (!kept) {
    post({ type: "result", id, error: residentMissing(spec.label, key!) });
    return;
  }
  try {
    const outputs = await runOrtSession(session, { ...kept, ...inputs });
    post(
      { type: "result", id, outputs },
      Object.values(outputs).map((t) => t.data.buffer as ArrayBuffer),
    );
  } catch (err) {
    post({ type: "result", id, error: runError(err, provider, spec.label) });
  }
}

port.on("message", (message: OwnerMessage) => {
  if (message.type === "close") {
    closing = true;
    // After the run in progress: never end the thread under a native run (onnxruntime-node aborts
    // the whole process when a run completes in a torn-down worker).
    queue = queue.then(async () => {
      await ready;
      resident.clear();
      await session?.release();
      session = undefined;
      port.close();
    });
    return;
  }
  if (message.type === "keep") {
    queue = queue.then(() => void resident.set(message.key, message.tensors));
    return;
  }
  if (message.type === "drop") {
    queue = queue.then(() => void resident.delete(message.key));
    return;
  }
  queue = queue.then(() => run(message.id, message.inputs, message.resident));
});
