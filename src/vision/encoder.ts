/**
 * `AlphaClipEncoder`: runs a converted Alpha-CLIP vision model folder (manifest kind
 * "alpha-clip-vision", or "alpha-clip-llava-fused" whose graph also applies the LLaVA projector) in
 * ONNX Runtime inside a worker thread (`OnnxSession`), so that the event loop never blocks on session
 * creation or runs.
 */
import path from "node:path";
import { RegionVqaError } from "../common/errors.js";
import { readModelManifest, type ModelManifest } from "../common/manifest.js";
import {
  OnnxSession,
  type OnnxSessionLogger,
  type OrtDevice,
  type OrtProvider,
} from "../common/ort/index.js";
import { makeTensor, type Tensor } from "../common/tensor.js";

/** Where the encoder runs (see `OnnxSession`). */
export type EncoderDevice = OrtDevice;
export type EncoderLogger = OnnxSessionLogger;

export interface EncoderLoadOptions {
  /** "auto" (default): CUDA, else WebGPU on a hardware adapter, else the CPU, logging the choice; an explicit device fails when unusable. */
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
export function readEncoderManifest(modelDir: string): Promise<ModelManifest<EncoderModelConfig>> {
  return readModelManifest<EncoderModelConfig>(modelDir, {
    kinds: MODEL_KINDS,
    folder: "Vision model folder",
    model: "an Alpha-CLIP vision model",
    positiveIntegers: ["width", "imageSize", "gridSize", "patchSize"],
    onnxFile: true,
  });
}

export class AlphaClipEncoder {
  private constructor(
    readonly modelDir: string,
    readonly manifest: ModelManifest<EncoderModelConfig>,
    readonly inputNames: { image: string; alpha: string },
    private readonly session: OnnxSession,
  ) {}

  /** The execution provider ONNX Runtime is using. */
  get provider(): OrtProvider {
    return this.session.provider;
  }
  /** WebGPU: the adapter's name. */
  /** Where it runs: "cpu", "cuda", or e.g. "webgpu (NVIDIA RTX 4090)". */
  get device(): string {
    return this.session.device;
  }
  get adapter(): string | undefined {
    return this.session.adapter;
  }
  get threads(): number {
    return this.session.threads;
  }
  get outputNames(): readonly string[] {
    return this.session.outputNames;
  }

  get config(): EncoderModelConfig {
    return this.manifest.config;
  }
  /** Input resolution R. */
  get imageSize(): number {
    return this.manifest.config.imageSize;
  }

  static async load(modelDir: string, options: EncoderLoadOptions = {}): Promise<AlphaClipEncoder> {
    const manifest = await readEncoderManifest(modelDir);
    const modelPath = path.resolve(modelDir, manifest.files.find((f) => f.role === "onnx")!.path);
    const session = await OnnxSession.open(modelPath, {
      label: "vision encoder",
      device: options.device,
      threads: options.threads,
      logger: options.logger,
    });
    const names = manifest.config.inputs ?? { image: "image", alpha: "alpha" };
    const missing = [names.image, names.alpha].find((n) => !session.inputNames.includes(n));
    if (missing !== undefined) {
      await session.dispose();
      throw new RegionVqaError(
        "model_invalid",
        `The vision model has no input "${missing}" (inputs: ${session.inputNames.join(", ")}).`,
      );
    }
    return new AlphaClipEncoder(modelDir, manifest, names, session);
  }

  /**
   * Encode N regions of one image in one batch. `pixelValues` may be [1, 3, R, R] (shared by all
   * regions; it is repeated) or [N, 3, R, R]; `alpha` is [N, 1, R, R]. Runs are queued in order.
   */
  async encode(input: EncoderInput): Promise<EncoderOutput> {
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
    const outputs = await this.session.run({
      [this.inputNames.image]: { data: images, dims: [n, 3, R, R] },
      [this.inputNames.alpha]: { data: alpha.data.slice(), dims: [n, 1, R, R] },
    });
    const tensor = (name: string) =>
      outputs[name] ? makeTensor(outputs[name].data as Float32Array, outputs[name].dims) : undefined;
    return {
      features: tensor(LLAVA_FEATURES_OUTPUT),
      imageEmbed: tensor(IMAGE_EMBED_OUTPUT),
      projected: tensor(PROJECTED_OUTPUT),
    };
  }

  /**
   * Release the session and stop the worker; pending and later calls reject with `aborted`. Resolves
   * once the run in progress, if any, has finished.
   */
  dispose(): Promise<void> {
    return this.session.dispose();
  }

  /** For tests: the worker's thread id (to check that work happens off the main thread). */
  get workerThreadId(): number | undefined {
    return this.session.workerThreadId;
  }
}
