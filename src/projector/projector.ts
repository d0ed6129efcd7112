/**
 * `LlavaProjector`: the LLaVA-1.5 projector running in ONNX Runtime. It loads from a projector model
 * folder (manifest kind "llava-projector"), an mmproj GGUF, a LLaVA checkpoint, or weights in memory.
 * Big projectors (the 7B one has ~21M parameters) run in a worker thread so `project` never blocks the
 * event loop; tiny ones run in-process.
 */
import { readFile, stat } from "node:fs/promises";
import path from "node:path";
import type { Worker } from "node:worker_threads";
import { RegionVqaError, type ErrorCode } from "../common/errors.js";
import type { ModelManifest } from "../common/manifest.js";
import { encodeOnnxModel } from "../common/onnx/index.js";
import { makeTensor, type Tensor } from "../common/tensor.js";
import { startSiblingWorker } from "../common/worker-url.js";
import { buildProjectorModel } from "./graph.js";
import { loadProjectorWeights } from "./load.js";
import { createSimpleSession, type ProjectorDevice, type SimpleSession } from "./ort-session.js";
import type { ProjectorWeights } from "./weights.js";

export interface ProjectorConfig {
  inWidth: number;
  hiddenWidth: number;
  outWidth: number;
  activation: "gelu_erf";
  input: string;
  output: string;
}

export interface ProjectorLoadOptions {
  /** ONNX Runtime intra-op threads (default 1). */
  threads?: number;
  device?: ProjectorDevice;
  /** Run the session in a worker thread; default: when the projector has at least 1M parameters. */
  worker?: boolean;
}

/** Where `project` runs: in-process session or a worker. */
interface Runner {
  run(data: Float32Array, dims: number[]): Promise<{ data: Float32Array; dims: number[] }>;
  close(): Promise<void>;
}

const WORKER_MIN_PARAMS = 1_000_000;

function inProcessRunner(session: SimpleSession): Runner {
  // ORT sessions are not re-entrant from JS's point of view: queue runs one after another.
  let queue: Promise<unknown> = Promise.resolve();
  return {
    run(data, dims) {
      const next = queue.then(() => session.run(data, dims));
      queue = next.catch(() => undefined);
      return next;
    },
    close: () => session.release(),
  };
}

async function workerRunner(model: string | Uint8Array, options: ProjectorLoadOptions): Promise<Runner> {
  const worker: Worker = startSiblingWorker(import.meta.url, "projector-worker", {
    workerData: { model, threads: options.threads ?? 1, device: options.device ?? "cpu" },
    transferList: typeof model === "string" ? [] : [model.buffer as ArrayBuffer],
  });
  const pending = new Map<
    number,
    { resolve: (v: { data: Float32Array; dims: number[] }) => void; reject: (e: Error) => void }
  >();
  let nextId = 1;
  let failure: Error | undefined;
  const failAll = (err: Error) => {
    failure ??= err;
    for (const p of pending.values()) p.reject(err);
    pending.clear();
  };
  await new Promise<void>((resolve, reject) => {
    const onMessage = (msg: { type?: string; error?: { code: ErrorCode; message: string } }) => {
      if (msg.type === "ready") {
        worker.off("error", onError);
        resolve();
      } else if (msg.type === "error") {
        worker.off("error", onError);
        void worker.terminate();
        reject(new RegionVqaError(msg.error!.code, msg.error!.message));
      }
    };
    const onError = (err: Error) =>
      reject(new RegionVqaError("internal", `projector worker failed to start: ${err.message}`));
    worker.once("message", onMessage);
    worker.once("error", onError);
  });
  worker.on(
    "message",
    (msg: {
      id: number;
      data?: Float32Array;
      dims?: number[];
      error?: { code: ErrorCode; message: string };
    }) => {
      const p = pending.get(msg.id);
      if (!p) return;
      pending.delete(msg.id);
      if (msg.error) p.reject(new RegionVqaError(msg.error.code, msg.error.message));
      else p.resolve({ data: msg.data!, dims: msg.dims! });
    },
  );
  worker.on("error", (err) =>
    failAll(new RegionVqaError("internal", `projector worker crashed: ${err.message}`)),
  );
  worker.on("exit", () => failAll(new RegionVqaError("internal", "projector worker exited")));
  return {
    run(data, dims) {
      if (failure) return Promise.reject(failure);
      const id = nextId++;
      return new Promise((resolve, reject) => {
        pending.set(id, { resolve, reject });
        worker.postMessage({ id, data, dims }, [data.buffer as ArrayBuffer]);
      });
    },
    async close() {
      failure ??= new RegionVqaError("aborted", "projector closed");
      await worker.terminate();
    },
  };
}

/** Read and check a projector model folder's manifest. */
export async function readProjectorManifest(dir: string): Promise<ModelManifest<ProjectorConfig>> {
  let manifest: ModelManifest<ProjectorConfig>;
  try {
    manifest = JSON.parse(
      await readFile(path.join(dir, "manifest.json"), "utf8"),
    ) as ModelManifest<ProjectorConfig>;
  } catch (err) {
    throw new RegionVqaError(
      "model_invalid",
      `${dir}/manifest.json is missing or not JSON: ${(err as Error).message}`,
    );
  }
  if (manifest.kind !== "llava-projector") {
    throw new RegionVqaError(
      "model_invalid",
      `${dir} holds a "${String(manifest.kind)}" model, not a llava-projector`,
    );
  }
  const c = manifest.config;
  if (!c || ![c.inWidth, c.hiddenWidth, c.outWidth].every((n) => Number.isInteger(n) && n > 0)) {
    throw new RegionVqaError(
      "model_invalid",
      `${dir}/manifest.json: config needs positive inWidth, hiddenWidth, outWidth`,
    );
  }
  if (!manifest.files?.some((f) => f.role === "onnx")) {
    throw new RegionVqaError("model_invalid", `${dir}/manifest.json lists no file with role "onnx"`);
  }
  return manifest;
}

export class LlavaProjector {
  private closed = false;

  private constructor(
    readonly inWidth: number,
    readonly hiddenWidth: number,
    readonly outWidth: number,
    /** Where it was loaded from: a folder, a GGUF / checkpoint path, or "memory". */
    readonly source: string,
    private readonly runner: Runner,
  ) {}

  /**
   * Load a projector. `source`: a projector model folder, an mmproj GGUF, a LLaVA checkpoint
   * (safetensors / PyTorch .bin / .pth with `model.mm_projector.{0,2}.*`), or weights in memory.
   */
  static async load(
    source: string | ProjectorWeights,
    options: ProjectorLoadOptions = {},
  ): Promise<LlavaProjector> {
    let model: string | Uint8Array;
    let widths: { inWidth: number; hiddenWidth: number; outWidth: number };
    let where: string;
    if (typeof source === "string") {
      const s = await stat(source).catch(() => undefined);
      if (!s) throw new RegionVqaError("model_not_found", `projector not found: ${source}`, { path: source });
      where = source;
      if (s.isDirectory()) {
        const manifest = await readProjectorManifest(source);
        widths = manifest.config;
        model = path.join(source, manifest.files.find((f) => f.role === "onnx")!.path);
      } else {
        const weights = await loadProjectorWeights(source);
        widths = weights;
        model = encodeOnnxModel(buildProjectorModel(weights));
      }
    } else {
      where = "memory";
      widths = source;
      model = encodeOnnxModel(buildProjectorModel(source));
    }
    const params = widths.inWidth * widths.hiddenWidth + widths.hiddenWidth * widths.outWidth;
    const useWorker = options.worker ?? params >= WORKER_MIN_PARAMS;
    const runner = useWorker
      ? await workerRunner(model, options)
      : inProcessRunner(await createSimpleSession(model, options));
    return new LlavaProjector(widths.inWidth, widths.hiddenWidth, widths.outWidth, where, runner);
  }

  /** features [N, T, inWidth] (or [T, inWidth]) -> [N, T, outWidth] (or [T, outWidth]). */
  async project(features: Tensor): Promise<Tensor> {
    if (this.closed) throw new RegionVqaError("aborted", "projector is closed");
    const shape = features.shape;
    if (shape.length !== 2 && shape.length !== 3) {
      throw new RegionVqaError(
        "invalid_request",
        `projector input must be [tokens, width] or [batch, tokens, width], got [${shape.join(", ")}]`,
      );
    }
    const width = shape[shape.length - 1];
    if (width !== this.inWidth) {
      throw new RegionVqaError(
        "model_mismatch",
        `features are ${width} wide but the projector expects ${this.inWidth}-wide input`,
        { featureWidth: width, projectorInWidth: this.inWidth },
      );
    }
    const dims = shape.length === 3 ? [...shape] : [1, ...shape];
    // Copy: the buffer is transferred to the worker and the caller keeps its own.
    const out = await this.runner.run(features.data.slice(), dims);
    const outShape = shape.length === 3 ? out.dims : out.dims.slice(1);
    return makeTensor(out.data, outShape);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.runner.close();
  }
}
