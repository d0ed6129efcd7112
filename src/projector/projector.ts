/**
 * `LlavaProjector`: the LLaVA-1.5 projector running in ONNX Runtime. It loads from a projector model
 * folder (manifest kind "llava-projector"), an mmproj GGUF, a LLaVA checkpoint, or weights in memory.
 * Big projectors (the 7B one has ~21M parameters) run in a worker thread so `project` never blocks the
 * event loop; tiny ones run on the calling thread. Both through `OnnxSession`.
 */
import { stat } from "node:fs/promises";
import path from "node:path";
import { RegionVqaError } from "../common/errors.js";
import { readModelManifest, type ModelManifest } from "../common/manifest.js";
import { encodeOnnxModel } from "../common/onnx/index.js";
import { OnnxSession, type OrtDevice } from "../common/ort/index.js";
import { makeTensor, type Tensor } from "../common/tensor.js";
import { buildProjectorModel } from "./graph.js";
import { loadProjectorWeights } from "./load.js";
import type { ProjectorWeights } from "./weights.js";

/** Where the projector runs (see `OnnxSession`); the pipeline passes the encoder's provider. */
export type ProjectorDevice = OrtDevice;

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
  /** Default "cpu". */
  device?: ProjectorDevice;
  /** Run the session in a worker thread; default: when the projector has at least 1M parameters. */
  worker?: boolean;
}

/** Below this many weights a run takes microseconds: a worker's message round trip would cost more. */
const WORKER_MIN_PARAMS = 1_000_000;

/** Read and check a projector model folder's manifest. */
export function readProjectorManifest(dir: string): Promise<ModelManifest<ProjectorConfig>> {
  return readModelManifest<ProjectorConfig>(dir, {
    kinds: ["llava-projector"],
    folder: "Projector folder",
    model: "a LLaVA projector",
    positiveIntegers: ["inWidth", "hiddenWidth", "outWidth"],
    onnxFile: true,
  });
}

export class LlavaProjector {
  private constructor(
    readonly inWidth: number,
    readonly hiddenWidth: number,
    readonly outWidth: number,
    /** Where it was loaded from: a folder, a GGUF / checkpoint path, or "memory". */
    readonly source: string,
    private readonly session: OnnxSession,
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
    const session = await OnnxSession.open(model, {
      label: "projector",
      device: options.device ?? "cpu",
      threads: options.threads ?? 1,
      inWorker: options.worker ?? params >= WORKER_MIN_PARAMS,
    });
    if (session.inputNames.length !== 1 || session.outputNames.length !== 1) {
      await session.dispose();
      throw new RegionVqaError("model_invalid", "projector model must have exactly one input and one output");
    }
    return new LlavaProjector(widths.inWidth, widths.hiddenWidth, widths.outWidth, where, session);
  }

  /** features [N, T, inWidth] (or [T, inWidth]) -> [N, T, outWidth] (or [T, outWidth]). */
  async project(features: Tensor): Promise<Tensor> {
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
    // Copy: the buffer moves to the worker and the caller keeps its own.
    const outputs = await this.session.run({
      [this.session.inputNames[0]]: { data: features.data.slice(), dims },
    });
    const out = outputs[this.session.outputNames[0]];
    const outShape = shape.length === 3 ? out.dims : out.dims.slice(1);
    return makeTensor(out.data as Float32Array, outShape);
  }

  /** Releases the session; runs queued behind it reject with `aborted`. */
  dispose(): Promise<void> {
    return this.session.dispose();
  }
}
