/**
 * Messages between `OnnxSession` (the owner, on the main thread) and `worker-host.ts`.
 *
 * workerData: `OrtSessionSpec`. The host answers `ready` or `load-error` (and then ends). Each `run`
 * is answered by one `result`, strictly in arrival order (one run at a time). `keep` stores tensors
 * in the worker under a key (moved, not copied) and `drop` forgets them, both in order with the runs;
 * a run naming a `resident` key gets those tensors as further inputs, so that inputs used by many runs
 * (a segmenter's image embeddings) cross the thread boundary once. `close` drops queued runs, lets
 * the current one finish, releases the session and ends the worker.
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
  | { type: "run"; id: number; inputs: Record<string, WireTensor>; resident?: string }
  | { type: "keep"; key: string; tensors: Record<string, WireTensor> }
  | { type: "drop"; key: string }
  | { type: "close" };
