/**
 * `ClipTextEncoder`: runs a converted CLIP text model folder (manifest kind "clip-text") in ONNX
 * Runtime through `OnnxSession` (a worker thread by default). `encode` takes token ids [N, 77] and
 * returns the unnormalised text features [N, D] (`encode_text` of the reference).
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
import type { ClipTextConfig, ClipTextLayout } from "./config.js";
import { INPUT_IDS_INPUT, LAST_HIDDEN_STATE_OUTPUT, TEXT_EMBEDS_OUTPUT } from "./text-graph.js";
import { checkTokenIds, type TokenIds } from "./token-ids.js";

export const CLIP_TEXT_MODEL_KIND = "clip-text";

/** manifest.config of a "clip-text" folder. */
export interface ClipTextManifestConfig extends ClipTextConfig {
  /** exp(logit_scale) of the checkpoint (CLIP's learnt scale), or null when it had none. */
  logitScale: number | null;
  /** What Alpha-CLIP multiplies cosine similarities by for zero-shot scores: the literal 100. */
  zeroShotScale: number;
  /** Alpha-CLIP's zero-shot prompt. */
  zeroShotTemplate: string;
  /** Layout of the converted checkpoint. */
  sourceLayout: ClipTextLayout;
  inputs: { inputIds: string };
  outputs: string[];
  [extra: string]: unknown;
}

export type ClipTextManifest = ModelManifest<ClipTextManifestConfig>;

export interface ClipTextLoadOptions {
  /** "auto" (default): CUDA, else WebGPU on a hardware adapter, else the CPU. */
  device?: OrtDevice;
  /** ONNX Runtime intra-op threads (default os.availableParallelism()). */
  threads?: number;
  logger?: OnnxSessionLogger;
  /** Rows per ONNX Runtime run (default 64): bounds the activations' memory for long label lists. */
  maxBatch?: number;
}

export interface ClipTextEncodeOptions {
  /** Also return ln_final's output for all contextLength positions [N, T, W]. Default false. */
  lastHiddenState?: boolean;
}

export interface ClipTextEncodeResult {
  /** [N, D], not normalised. */
  textEmbeds: Tensor;
  /** [N, contextLength, W] when asked for. */
  lastHiddenState?: Tensor;
}

/** Read and check a text model folder's manifest. */
export function readClipTextManifest(modelDir: string): Promise<ClipTextManifest> {
  return readModelManifest<ClipTextManifestConfig>(modelDir, {
    kinds: [CLIP_TEXT_MODEL_KIND],
    folder: "Text model folder",
    model: "a CLIP text model",
    positiveIntegers: ["width", "contextLength", "vocabSize", "embedDim"],
    onnxFile: true,
  });
}

export class ClipTextEncoder {
  private constructor(
    readonly modelDir: string,
    readonly manifest: ClipTextManifest,
    private readonly session: OnnxSession,
    private readonly inputName: string,
    private readonly maxBatch: number,
  ) {}

  static async load(modelDir: string, options: ClipTextLoadOptions = {}): Promise<ClipTextEncoder> {
    const manifest = await readClipTextManifest(modelDir);
    const modelPath = path.resolve(modelDir, manifest.files.find((f) => f.role === "onnx")!.path);
    const session = await OnnxSession.open(modelPath, {
      label: "text encoder",
      device: options.device,
      threads: options.threads,
      logger: options.logger,
    });
    const inputName = manifest.config.inputs?.inputIds ?? INPUT_IDS_INPUT;
    const missing = !session.inputNames.includes(inputName)
      ? `input "${inputName}"`
      : !session.outputNames.includes(TEXT_EMBEDS_OUTPUT)
        ? `output "${TEXT_EMBEDS_OUTPUT}"`
        : undefined;
    if (missing) {
      await session.dispose();
      throw new RegionVqaError("model_invalid", `The text model has no ${missing}.`);
    }
    const maxBatch = Math.max(1, Math.floor(options.maxBatch ?? 64));
    return new ClipTextEncoder(modelDir, manifest, session, inputName, maxBatch);
  }

  get config(): ClipTextManifestConfig {
    return this.manifest.config;
  }
  get contextLength(): number {
    return this.manifest.config.contextLength;
  }
  get embedDim(): number {
    return this.manifest.config.embedDim;
  }
  get provider(): OrtProvider {
    return this.session.provider;
  }
  /** Where it runs: "cpu", "cuda", or e.g. "webgpu (NVIDIA RTX 4090)". */
  get device(): string {
    return this.session.device;
  }
  get threads(): number {
    return this.session.threads;
  }

  /** Text features [N, D] (unnormalised) for token ids [N, contextLength]. */
  async encode(ids: TokenIds | readonly ArrayLike<number>[]): Promise<Tensor> {
    return (await this.encodeDetailed(ids)).textEmbeds;
  }

  /**
   * Like `encode`, optionally with the last hidden state. Without it, each run is cut after the
   * batch's last EOT: the causal mask makes the pooled rows independent of later positions.
   */
  async encodeDetailed(
    ids: TokenIds | readonly ArrayLike<number>[],
    options: ClipTextEncodeOptions = {},
  ): Promise<ClipTextEncodeResult> {
    const { contextLength: T, vocabSize, embedDim: D, width: W } = this.manifest.config;
    const checked = checkTokenIds(ids, T, vocabSize);
    const wantHidden = options.lastHiddenState === true;
    if (wantHidden && !this.session.outputNames.includes(LAST_HIDDEN_STATE_OUTPUT)) {
      throw new RegionVqaError(
        "model_invalid",
        `The text model has no output "${LAST_HIDDEN_STATE_OUTPUT}".`,
      );
    }
    const embeds = new Float32Array(checked.rows * D);
    const hidden = wantHidden ? new Float32Array(checked.rows * T * W) : undefined;
    for (let start = 0; start < checked.rows; start += this.maxBatch) {
      const n = Math.min(this.maxBatch, checked.rows - start);
      const length = wantHidden ? T : Math.max(...checked.eot.slice(start, start + n)) + 1;
      const chunk = new BigInt64Array(n * length);
      for (let r = 0; r < n; r++) {
        const from = (start + r) * T;
        chunk.set(checked.data.subarray(from, from + length), r * length);
      }
      const out = await this.session.run({ [this.inputName]: { data: chunk, dims: [n, length] } });
      const e = out[TEXT_EMBEDS_OUTPUT];
      if (!e || !(e.data instanceof Float32Array) || e.data.length !== n * D) {
        throw new RegionVqaError(
          "model_invalid",
          `The text model's ${TEXT_EMBEDS_OUTPUT} is not float32 [${n}, ${D}].`,
        );
      }
      embeds.set(e.data, start * D);
      if (hidden) hidden.set(out[LAST_HIDDEN_STATE_OUTPUT].data as Float32Array, start * T * W);
    }
    return {
      textEmbeds: makeTensor(embeds, [checked.rows, D]),
      ...(hidden ? { lastHiddenState: makeTensor(hidden, [checked.rows, T, W]) } : {}),
    };
  }

  /** Release the session; pending and later calls reject with `aborted`. */
  dispose(): Promise<void> {
    return this.session.dispose();
  }
}
