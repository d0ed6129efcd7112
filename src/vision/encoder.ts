/**
 * `AlphaClipEncoder`: runs a converted Alpha-CLIP vision model folder (manifest kind
 * "alpha-clip-vision", or "alpha-clip-llava-fused" whose graph also applies the LLaVA projector) in
 * ONNX Runtime inside a worker thread, so that the event loop never blocks on session creation or runs.
 */
import { readFile, stat } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import type { Worker } from "node:worker_threads";
import { RegionVqaError } from "../common/errors.js";
import type { ModelManifest } from "../common/manifest.js";
import { makeTensor, type Tensor } from "../common/tensor.js";
import { startSiblingWorker } from "../common/worker-url.js";
import type { EncoderDevice, EncoderWorkerInit, WireError, WireTensor } from "./encoder-worker.js";

export type { EncoderDevice } from "./encoder-worker.js";

export interface EncoderLogger {
  info(message: string): void;
  warn?(message: string): void;
}

export interface EncoderLoadOptions {
  /** "auto" (default) tries CUDA and falls back to the CPU, logging the choice; "cuda" fails when CUDA is unusable. */
  device?: EncoderDevice;
  /** ONNX Runtime intra-op threads (default os.availableParallelism()). */
  threads?: number;
  logger?: EncoderLogger;
}

/** What the encoder needs from manifest.config (the converter writes more). */
export interface EncoderModelConfig {
  width: number;
  layers: number;
  heads: number;
  patchSize: number;
  imageSize: number;
  gridSize: number;
  outputDim: number;
  inputs?: { image: string; alpha: string };
  outputs?: string[];
  [extra: string]: unknown;
}

export interface EncoderInput {
  /** [1, 3, R, R] (one image shared by every region) or [N, 3, R, R]. */
  pixelValues: Tensor;
  /** [N, 1, R, R]: one alpha per region. */
  alpha: Tensor;
}

export interface EncoderOutput {
  /** LLaVA features [N, G*G, W] (absent from fused folders that only output `projected`). */
  features?: Tensor;
  /** CLIP image embedding [N, D] when the model has it. */
  imageEmbed?: Tensor;
  /** Fused folders: projector output [N, G*G, n_embd]. */
  projected?: Tensor;
}

const MODEL_KINDS = ["alpha-clip-vision", "alpha-clip-llava-fused"] as const;
export const LLAVA_FEATURES_OUTPUT = "llava_features";
export const IMAGE_EMBED_OUTPUT = "image_embed";
export const PROJECTED_OUTPUT = "projected";

/** Read and check a vision model folder's manifest. */
export async function readEncoderManifest(modelDir: string): Promise<ModelManifest<EncoderModelConfig>> {
  const s = await stat(modelDir).catch(() => undefined);
  if (!s?.isDirectory())
    throw new RegionVqaError("model_not_found", `Vision model folder not found: ${modelDir}`, {
      path: modelDir,
    });
  let manifest: ModelManifest<EncoderModelConfig>;
  try {
    manifest = JSON.parse(
      await readFile(path.join(modelDir, "manifest.json"), "utf8"),
    ) as ModelManifest<EncoderModelConfig>;
  } catch (err) {
    throw new RegionVqaError(
      "model_invalid",
      `${modelDir}/manifest.json is missing or not JSON: ${(err as Error).message}`,
    );
  }
  if (!(MODEL_KINDS as readonly string[]).includes(manifest.kind)) {
    throw new RegionVqaError(
      "model_invalid",
      `${modelDir} holds a "${String(manifest.kind)}" model, not an Alpha-CLIP vision model (${MODEL_KINDS.join(" or ")}).`,
    );
  }
  const c = manifest.config;
  for (const key of ["width", "imageSize", "gridSize", "patchSize"] as const) {
    if (!c || !Number.isInteger(c[key]) || c[key] <= 0) {
      throw new RegionVqaError(
        "model_invalid",
        `${modelDir}/manifest.json: config.${key} must be a positive integer.`,
      );
    }
  }
  if (!manifest.files?.some((f) => f.role === "onnx")) {
    throw new RegionVqaError("model_invalid", `${modelDir}/manifest.json lists no file with role "onnx".`);
  }
  return manifest;
}

interface Pending {
  resolve(outputs: Record<string, WireTensor>): void;
  reject(err: Error): void;
}

export class AlphaClipEncoder {
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private failure: Error | undefined;
  private disposed = false;
  /** Settles when the worker thread has ended, however it ended. */
  private readonly exited: Promise<void>;

  private constructor(
    readonly modelDir: string,
    readonly manifest: ModelManifest<EncoderModelConfig>,
    /** The execution provider ONNX Runtime is using. */
    readonly provider: "cuda" | "cpu",
    readonly threads: number,
    readonly inputNames: { image: string; alpha: string },
    readonly outputNames: readonly string[],
    private readonly worker: Worker,
  ) {
    worker.on("message", (msg: { id?: number; outputs?: Record<string, WireTensor>; error?: WireError }) => {
      if (msg.id === undefined) return;
      const p = this.pending.get(msg.id);
      if (!p) return;
      this.pending.delete(msg.id);
      if (msg.error) p.reject(new RegionVqaError(msg.error.code, msg.error.message));
      else p.resolve(msg.outputs!);
    });
    worker.on("error", (err) =>
      this.failAll(new RegionVqaError("internal", `vision encoder worker crashed: ${err.message}`)),
    );
    this.exited = new Promise((resolve) => worker.once("exit", () => resolve()));
    worker.on("exit", (exitCode) =>
      this.failAll(
        this.disposed
          ? new RegionVqaError("aborted", "vision encoder was disposed")
          : new RegionVqaError("internal", `vision encoder worker exited unexpectedly (code ${exitCode})`),
      ),
    );
  }

  get config(): EncoderModelConfig {
    return this.manifest.config;
  }
  /** Input resolution R. */
  get imageSize(): number {
    return this.manifest.config.imageSize;
  }

  static async load(modelDir: string, options: EncoderLoadOptions = {}): Promise<AlphaClipEncoder> {
    const device = options.device ?? "auto";
    if (!["auto", "cuda", "cpu"].includes(device)) {
      throw new RegionVqaError("invalid_request", `Unknown device "${device}"; use auto, cuda or cpu.`);
    }
    const threads = Math.max(1, Math.floor(options.threads ?? os.availableParallelism()));
    const manifest = await readEncoderManifest(modelDir);
    const modelPath = path.resolve(modelDir, manifest.files.find((f) => f.role === "onnx")!.path);
    const init: EncoderWorkerInit = { modelPath, device, threads };
    const worker = startSiblingWorker(import.meta.url, "encoder-worker", { workerData: init });
    type Ready = {
      type: "ready";
      provider: "cuda" | "cpu";
      fallbackReason?: string;
      inputNames: string[];
      outputNames: string[];
    };
    let ready: Ready;
    try {
      ready = await new Promise<Ready>((resolve, reject) => {
        const onMessage = (msg: Ready | { type: "error"; error: WireError }) => {
          cleanup();
          if (msg.type === "ready") resolve(msg);
          else reject(new RegionVqaError(msg.error.code, msg.error.message));
        };
        const onError = (err: Error) => {
          cleanup();
          reject(new RegionVqaError("internal", `vision encoder worker failed to start: ${err.message}`));
        };
        const onExit = (exitCode: number) => {
          cleanup();
          reject(
            new RegionVqaError("internal", `vision encoder worker exited while loading (code ${exitCode})`),
          );
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
    } catch (err) {
      await worker.terminate();
      throw err;
    }
    const logger = options.logger;
    if (ready.provider === "cuda")
      logger?.info(`vision encoder: ONNX Runtime on CUDA (${path.basename(modelDir)})`);
    else if (ready.fallbackReason) {
      logger?.info(
        `vision encoder: CUDA unavailable, using the CPU with ${threads} threads (${ready.fallbackReason.split("\n")[0]})`,
      );
    } else logger?.info(`vision encoder: ONNX Runtime on the CPU with ${threads} threads`);

    const names = manifest.config.inputs ?? { image: "image", alpha: "alpha" };
    for (const n of [names.image, names.alpha]) {
      if (!ready.inputNames.includes(n)) {
        await worker.terminate();
        throw new RegionVqaError(
          "model_invalid",
          `The vision model has no input "${n}" (inputs: ${ready.inputNames.join(", ")}).`,
        );
      }
    }
    return new AlphaClipEncoder(
      modelDir,
      manifest,
      ready.provider,
      threads,
      names,
      ready.outputNames,
      worker,
    );
  }

  private failAll(err: Error): void {
    this.failure ??= err;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }

  /**
   * Encode N regions of one image in one batch. `pixelValues` may be [1, 3, R, R] (shared by all
   * regions; it is repeated) or [N, 3, R, R]; `alpha` is [N, 1, R, R]. Runs are queued in order.
   */
  async encode(input: EncoderInput): Promise<EncoderOutput> {
    if (this.failure) throw this.failure;
    if (this.disposed) throw new RegionVqaError("aborted", "vision encoder was disposed");
    const R = this.imageSize;
    const { pixelValues, alpha } = input;
    const shapeText = (t: Tensor) => `[${t.shape.join(", ")}]`;
    if (
      alpha.shape.length !== 4 ||
      alpha.shape[1] !== 1 ||
      alpha.shape[2] !== R ||
      alpha.shape[3] !== R ||
      alpha.shape[0] < 1
    ) {
      throw new RegionVqaError(
        "model_mismatch",
        `alpha must be [N, 1, ${R}, ${R}] for this model, got ${shapeText(alpha)}.`,
      );
    }
    const n = alpha.shape[0];
    const ps = pixelValues.shape;
    if (ps.length !== 4 || ps[1] !== 3 || ps[2] !== R || ps[3] !== R || (ps[0] !== 1 && ps[0] !== n)) {
      throw new RegionVqaError(
        "model_mismatch",
        `pixelValues must be [1 or ${n}, 3, ${R}, ${R}] for this model, got ${shapeText(pixelValues)}.`,
      );
    }
    const plane = 3 * R * R;
    let images: Float32Array;
    if (ps[0] === n) images = pixelValues.data.slice();
    else {
      images = new Float32Array(n * plane);
      for (let i = 0; i < n; i++) images.set(pixelValues.data.subarray(0, plane), i * plane);
    }
    const alphas = alpha.data.slice();
    const id = this.nextId++;
    const outputs = await new Promise<Record<string, WireTensor>>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage(
        {
          id,
          inputs: {
            [this.inputNames.image]: { data: images, dims: [n, 3, R, R] },
            [this.inputNames.alpha]: { data: alphas, dims: [n, 1, R, R] },
          },
        },
        [images.buffer as ArrayBuffer, alphas.buffer as ArrayBuffer],
      );
    });
    const tensor = (name: string) =>
      outputs[name] ? makeTensor(outputs[name].data, outputs[name].dims) : undefined;
    return {
      features: tensor(LLAVA_FEATURES_OUTPUT),
      imageEmbed: tensor(IMAGE_EMBED_OUTPUT),
      projected: tensor(PROJECTED_OUTPUT),
    };
  }

  /**
   * Release the session and stop the worker; pending and later calls reject with `aborted`. Resolves
   * when the worker has ended, i.e. after the run in progress, if any, has finished.
   */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    this.failAll(new RegionVqaError("aborted", "vision encoder was disposed"));
    // The worker ends itself once the run in progress (if any) is over. It is never terminated from
    // here: onnxruntime-node aborts the whole process when a run completes in a terminated worker.
    this.worker.postMessage({ type: "close" });
    await this.exited;
  }

  /** For tests: the worker's thread id (to check that work happens off the main thread). */
  get workerThreadId(): number {
    return this.worker.threadId;
  }
}
