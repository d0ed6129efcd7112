/**
 * Messages between `OnnxSession` (the owner, on the main thread) and `worker-host.ts`.
 *
 * workerData: `OrtSessionSpec`. The host answers `ready` or `load-error` (and then ends). Each `run`
 * is answered by one `result`, strictly in arrival order (one run at a time). `close` drops queued
 * runs, lets the current one finish, releases the session and ends the worker.
 */
import type { OrtProvider, WireError, WireTensor } from "./session.js";

export type HostMessage =
  | {
      type: "ready";
      provider: OrtProvider;
      adapter?: string;
      fallbackReason?: string;
      inputNames: string[];
      outputNames: string[];
    }
  | { type: "load-error"; error: WireError }
  | { type: "result"; id: number; outputs?: Record<string, WireTensor>; error?: WireError };

export type OwnerMessage =
  { type: "run"; id: number; inputs: Record<string, WireTensor> } | { type: "close" };
