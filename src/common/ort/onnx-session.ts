/**
 * `OnnxSession`: the one way this project runs an ONNX model. By default the session lives in a worker
 * thread (`worker-host.ts`) so that creating it and running it never block the event loop; tiny models
 * may run on the calling thread instead. Either way runs are queued in order, errors arrive as
 * `RegionVqaError`, and `dispose()` waits for the run in progress before the session is released.
 */
import os from "node:os";
import type { Worker } from "node:worker_threads";
import type * as ort from "onnxruntime-node";
import { RegionVqaError } from "../errors.js";
import { ownsWholeBuffer } from "../tensor.js";
import { startSiblingWorker } from "../worker-url.js";
import type { HostMessage, OwnerMessage } from "./protocol.js";
import {
  createOrtSession,
  fromWireError,
  ORT_DEVICES,
  residentMissing,
  runError,
  runOrtSession,
  type OrtDevice,
  type OrtProvider,
  type OrtSessionSpec,
  type WireTensor,
} from "./session.js";

export interface OnnxSessionLogger {
  info(message: string): void;
}

export interface OnnxSessionOptions {
  /** What the model is, for logs and errors ("vision encoder", "projector"). */
  label: string;
  /** Default "auto": CUDA when its provider loads, else the CPU. */
  device?: OrtDevice;
  /** ONNX Runtime intra-op threads. Default: the machine's cores. */
  threads?: number;
  /** Default true. false runs on the calling thread: only for models whose runs take microseconds. */
  inWorker?: boolean;
  /**
   * A run that takes longer than this (from its start, not its queueing) fails with `device_failed`,
   * and so does every later one: a hung GPU must not hang the requests behind it. Default 10 minutes.
   */
  runTimeoutMs?: number;
  logger?: OnnxSessionLogger;
}

type Outputs = Record<string, WireTensor>;

/** How runs reach the session: over a worker's message port, or directly. */
interface Transport {
  run(inputs: Outputs, resident?: string): Promise<Outputs>;
  keep(key: string, tensors: Outputs): void;
  drop(key: string): void;
  /** Resolves once the run in progress (if any) is over and the session is released. */
  close(): Promise<void>;
  /** The worker thread, when there is one (its id shows work happens off the main thread). */
  readonly worker?: Worker;
}

interface Ready {
  provider: OrtProvider;
  adapter?: string;
  fallbackReason?: string;
  inputNames: string[];
  outputNames: string[];
}

const DEFAULT_RUN_TIMEOUT_MS = 10 * 60_000;

export class OnnxSession {
  private disposed = false;
  /** Set when a run overran its time: the session is unusable from then on. */
  private failure: RegionVqaError | undefined;
  /** Settles when the run submitted last has settled (runs execute in order: the next starts then). */
  private tail: Promise<unknown> = Promise.resolve();
  /** Runs not settled yet, to fail them all at once when one overruns. */
  private readonly outstanding = new Set<(err: RegionVqaError) => void>();
  private readonly counts = { runs: 0, inputBytes: 0, keptBytes: 0 };

  private constructor(
    readonly label: string,
    readonly provider: OrtProvider,
    /** WebGPU: the adapter's name. */
    readonly adapter: string | undefined,
    readonly threads: number,
    readonly inputNames: readonly string[],
    readonly outputNames: readonly string[],
    private readonly transport: Transport,
    private readonly runTimeoutMs: number,
  ) {}

  static async open(model: string | Uint8Array, options: OnnxSessionOptions): Promise<OnnxSession> {
    const device = options.device ?? "auto";
    if (!ORT_DEVICES.includes(device)) {
      throw new RegionVqaError(
        "invalid_request",
        `Unknown device "${String(device)}"; use ${ORT_DEVICES.join(", ")}.`,
      );
    }
    const threads = Math.max(1, Math.floor(options.threads ?? os.availableParallelism()));
    const spec: OrtSessionSpec = { model, device, threads, label: options.label };
    const { ready, transport } =
      options.inWorker === false ? await inProcessTransport(spec) : await workerTransport(spec);
    const log = options.logger;
    if (ready.provider === "cuda") log?.info(`${spec.label}: ONNX Runtime on CUDA`);
    else if (ready.provider === "webgpu") {
      log?.info(`${spec.label}: ONNX Runtime on WebGPU (${ready.adapter ?? "adapter unknown"})`);
    } else {
      const why = ready.fallbackReason ? ` (${device}: ${ready.fallbackReason})` : "";
      log?.info(`${spec.label}: ONNX Runtime on the CPU with ${threads} threads${why}`);
    }
    return new OnnxSession(
      spec.label,
      ready.provider,
      ready.adapter,
      threads,
      ready.inputNames,
      ready.outputNames,
      transport,
      options.runTimeoutMs ?? DEFAULT_RUN_TIMEOUT_MS,
    );
  }

  /** Where it runs, for logs and /readyz: "cpu", "cuda", or e.g. "webgpu (NVIDIA RTX 4090)". */
  get device(): string {
    return this.adapter ? `${this.provider} (${this.adapter})` : this.provider;
  }

  /**
   * Keeps `tensors` where the session runs, under `key`, for runs that name it (`run(inputs, { resident:
   * key })`): inputs shared by many runs then cross to the worker once. Their buffers are moved
   * (detached here). Ordered with the runs: a run submitted after `keep` sees the tensors.
   */
  keep(key: string, tensors: Outputs): void {
    if (this.disposed) throw new RegionVqaError("aborted", `${this.label} was disposed`);
    this.counts.keptBytes += tensorBytes(tensors);
    this.transport.keep(key, tensors);
  }

  /** Runs made and bytes of inputs handed to the session (per run, and kept for later runs). */
  transfers(): { runs: number; inputBytes: number; keptBytes: number } {
    return { ...this.counts };
  }

  /** Forgets the tensors kept under `key`, after the runs submitted before. */
  drop(key: string): void {
    if (!this.disposed) this.transport.drop(key);
  }

  /**
   * One run, queued behind earlier ones. The inputs' buffers are transferred to the worker (they are
   * detached afterwards): pass arrays the caller does not need again. With `resident`, the tensors
   * kept under that key are inputs too; when they are gone the run fails with `internal` and
   * `details.residentMissing`.
   */
  async run(inputs: Outputs, options: { resident?: string } = {}): Promise<Outputs> {
    if (this.disposed) throw new RegionVqaError("aborted", `${this.label} was disposed`);
    if (this.failure) throw this.failure;
    this.counts.runs++;
    this.counts.inputBytes += tensorBytes(inputs);
    const started = this.tail;
    const result = this.transport.run(inputs, options.resident);
    this.tail = result.catch(() => undefined);
    let timer: NodeJS.Timeout | undefined;
    let fail!: (err: RegionVqaError) => void;
    const overrun = new Promise<never>((_resolve, reject) => (fail = reject));
    this.outstanding.add(fail);
    void started.then(() => {
      timer = setTimeout(() => this.overran(), this.runTimeoutMs);
      timer.unref();
    });
    try {
      return await Promise.race([result, overrun]);
    } finally {
      clearTimeout(timer);
      this.outstanding.delete(fail);
    }
  }

  private overran(): void {
    this.failure ??= new RegionVqaError(
      "device_failed",
      `${this.label}: a run on ${this.provider} did not finish within ${this.runTimeoutMs} ms; the device ` +
        "may be lost or hung. Restart the process (or choose another device).",
    );
    for (const fail of this.outstanding) fail(this.failure);
    this.outstanding.clear();
  }

  /**
   * Fails the queued runs with `aborted`, waits for the one in progress, releases the session. After a
   * run overran, it waits a few seconds at most and then leaves the stuck thread behind (detached):
   * ending it under a native run could take the process down.
   */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    if (!this.failure) {
      await this.transport.close();
      return;
    }
    this.transport.worker?.unref();
    await Promise.race([this.transport.close(), new Promise((r) => setTimeout(r, 5000).unref())]);
  }

  /** The worker's thread id (undefined on the calling thread); tests check work happens off it. */
  get workerThreadId(): number | undefined {
    return this.transport.worker?.threadId;
  }
}

function tensorBytes(tensors: Outputs): number {
  return Object.values(tensors).reduce((n, t) => n + t.data.byteLength, 0);
}

async function inProcessTransport(spec: OrtSessionSpec): Promise<{ ready: Ready; transport: Transport }> {
  const { session, provider, adapter, fallbackReason } = await createOrtSession(spec);
  let queue: Promise<unknown> = Promise.resolve();
  let closed = false;
  const resident = new Map<string, Outputs>();
  const transport: Transport = {
    run(inputs, key) {
      const next = queue.then(() => {
        if (closed) throw new RegionVqaError("aborted", `${spec.label} was disposed`);
        const kept = key === undefined ? {} : resident.get(key);
        if (!kept) throw fromWireError(residentMissing(spec.label, key!));
        return runOrtSession(session, { ...kept, ...inputs }).catch((err: unknown) => {
          throw fromWireError(runError(err, provider, spec.label));
        });
      });
      queue = next.catch(() => undefined);
      return next;
    },
    keep(key, tensors) {
      queue = queue.then(() => resident.set(key, tensors));
    },
    drop(key) {
      queue = queue.then(() => resident.delete(key));
    },
    async close() {
      closed = true;
      await queue;
      resident.clear();
      await session.release();
    },
  };
  return { ready: { ...readyOf(session), provider, adapter, fallbackReason }, transport };
}

function readyOf(session: ort.InferenceSession): Pick<Ready, "inputNames" | "outputNames"> {
  return { inputNames: session.inputNames.slice(), outputNames: session.outputNames.slice() };
}

/**
 * Inputs ready to move to the worker: arrays that own their whole buffer are transferred; a view into
 * a bigger buffer is copied first (moving it would detach the caller's other data, cloning it would
 * copy the whole buffer).
 */
function movable(inputs: Outputs): { message: Outputs; transfer: ArrayBuffer[] } {
  const message: Outputs = {};
  const transfer = new Set<ArrayBuffer>();
  for (const [name, t] of Object.entries(inputs)) {
    const data =
      ownsWholeBuffer(t.data) && !transfer.has(t.data.buffer as ArrayBuffer) ? t.data : t.data.slice();
    transfer.add(data.buffer as ArrayBuffer);
    message[name] = { data, dims: t.dims };
  }
  return { message, transfer: [...transfer] };
}

async function workerTransport(spec: OrtSessionSpec): Promise<{ ready: Ready; transport: Transport }> {
  const worker: Worker = startSiblingWorker(import.meta.url, "worker-host", {
    workerData: spec,
    // A model in memory moves to the worker instead of being copied.
    transferList: typeof spec.model === "string" ? [] : [spec.model.buffer as ArrayBuffer],
  });
  const exited = new Promise<void>((resolve) => worker.once("exit", () => resolve()));
  const ready = await new Promise<Ready>((resolve, reject) => {
    const onMessage = (message: HostMessage) => {
      if (message.type === "ready") {
        cleanup();
        resolve(message);
      } else if (message.type === "load-error") {
        cleanup();
        // The host ends itself after a failed load; wait for that rather than terminate it.
        void exited.then(() => reject(fromWireError(message.error)));
      }
    };
    const onError = (err: Error) => {
      cleanup();
      reject(new RegionVqaError("internal", `${spec.label} worker failed to start: ${err.message}`));
    };
    const onExit = (code: number) => {
      cleanup();
      reject(new RegionVqaError("internal", `${spec.label} worker exited while loading (code ${code})`));
    };
    const cleanup = () => {
      worker.off("message", onMessage);
      worker.off("error", onError);
      worker.off("exit", onExit);
    };
    worker.on("message", onMessage);
    worker.on("error", onError);
    worker.on("exit", onExit);
  });

  const pending = new Map<number, { resolve(o: Outputs): void; reject(e: Error): void }>();
  let nextId = 1;
  let failure: Error | undefined;
  let closing = false;
  const failAll = (err: Error) => {
    failure ??= err;
    for (const p of pending.values()) p.reject(err);
    pending.clear();
  };
  worker.on("message", (message: HostMessage) => {
    if (message.type !== "result") return;
    const p = pending.get(message.id);
    if (!p) return;
    pending.delete(message.id);
    if (message.error) p.reject(fromWireError(message.error));
    else p.resolve(message.outputs ?? {});
  });
  worker.on("error", (err) =>
    failAll(new RegionVqaError("internal", `${spec.label} worker crashed: ${err.message}`)),
  );
  worker.on("exit", (code) =>
    failAll(
      closing
        ? new RegionVqaError("aborted", `${spec.label} was disposed`)
        : new RegionVqaError("internal", `${spec.label} worker exited unexpectedly (code ${code})`),
    ),
  );
  const send = (message: OwnerMessage, transfer: ArrayBuffer[] = []) => worker.postMessage(message, transfer);

  const transport: Transport = {
    worker,
    run(inputs, resident) {
      if (failure) return Promise.reject(failure);
      const id = nextId++;
      const { message, transfer } = movable(inputs);
      return new Promise<Outputs>((resolve, reject) => {
        pending.set(id, { resolve, reject });
        send({ type: "run", id, inputs: message, ...(resident !== undefined ? { resident } : {}) }, transfer);
      });
    },
    keep(key, tensors) {
      if (failure) return;
      const { message, transfer } = movable(tensors);
      send({ type: "keep", key, tensors: message }, transfer);
    },
    drop(key) {
      if (!failure && !closing) send({ type: "drop", key });
    },
    async close() {
      closing = true;
      failAll(new RegionVqaError("aborted", `${spec.label} was disposed`));
      // Never terminate: the host ends itself once the run in progress is over.
      send({ type: "close" });
      await exited;
    },
  };
  return { ready, transport };
}
