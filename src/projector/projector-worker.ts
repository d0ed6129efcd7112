/**
 * Worker thread holding the projector's ONNX Runtime session, so that session creation and runs (a 7B
 * projector takes noticeable CPU time for 576 tokens) never block the main event loop.
 * Protocol: workerData = { model: string | Uint8Array, threads, device } ; the worker posts
 * { type: "ready" } or { type: "error", error }; then each { id, data, dims } gets { id, data, dims } or
 * { id, error } back.
 */
import { parentPort, workerData } from "node:worker_threads";
import {
  createSimpleSession,
  serializeError,
  type OrtSessionOptions,
  type SimpleSession,
} from "./ort-session.js";

interface InitData extends OrtSessionOptions {
  model: string | Uint8Array;
}

const port = parentPort;
if (!port) throw new Error("projector-worker must run as a worker thread");

let session: SimpleSession | undefined;
const init = workerData as InitData;

createSimpleSession(init.model, { threads: init.threads, device: init.device }).then(
  (s) => {
    session = s;
    port.postMessage({ type: "ready" });
  },
  (err: unknown) => port.postMessage({ type: "error", error: serializeError(err) }),
);

port.on("message", (msg: { id: number; data?: Float32Array; dims?: number[]; close?: boolean }) => {
  if (msg.close) {
    void (session?.release() ?? Promise.resolve()).finally(() => port.close());
    return;
  }
  if (!session || !msg.data || !msg.dims) {
    port.postMessage({ id: msg.id, error: { code: "internal", message: "projector session not ready" } });
    return;
  }
  session.run(msg.data, msg.dims).then(
    (out) =>
      port.postMessage({ id: msg.id, data: out.data, dims: out.dims }, [out.data.buffer as ArrayBuffer]),
    (err: unknown) => port.postMessage({ id: msg.id, error: serializeError(err) }),
  );
});
