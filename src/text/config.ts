/**
 * Recognises a CLIP text tower in a checkpoint, presents it under one set of names whatever its
 * layout, checks every tensor's shape and infers the configuration (docs/reference.md section 6).
 *
 * Layouts:
 * - OpenAI (`torch.save` state dict of the whole CLIP or of its text part, or the parameters of a
 *   TorchScript `.pt`): `token_embedding.weight`, `positional_embedding`, `transformer.resblocks.N.*`,
 *   `ln_final.*`, `text_projection` [W, D], `logit_scale`; `visual.*` is ignored.
 * - Hugging Face (`CLIPModel` / `CLIPTextModelWithProjection`: `pytorch_model.bin` or
 *   `model.safetensors`): `text_model.*`, `text_projection.weight` [D, W] (the transpose), `logit_scale`.
 *
 * The canonical names are OpenAI's, except that each block's attention input projection is
 * `attn.in_proj.{weight,bias}` (the visual tower's spelling), which the shared `ClipLayers` read.
 */
import { RegionVqaError } from "../common/errors.js";
import { renameKeys, type StateDict, type TensorInfo } from "../vision/checkpoint/index.js";
import { missingKey } from "../vision/checkpoint/state-dict.js";
import { checkpointInvalid, FLOAT_DTYPES, shapeChecker } from "../vision/convert/checkpoint-shapes.js";

export interface ClipTextConfig {
  width: number;
  layers: number;
  /** Not stored in checkpoints: width / 64 unless given. */
  heads: number;
  /** Hidden size of each block's MLP (4 * width in CLIP). */
  mlpWidth: number;
  /** Token positions (77 in CLIP); inputs are [N, contextLength]. */
  contextLength: number;
  vocabSize: number;
  /** Output feature size D (columns of text_projection). */
  embedDim: number;
}

export type ClipTextLayout = "openai" | "huggingface";

export interface InspectedTextCheckpoint {
  config: ClipTextConfig;
  /** The text tower under the canonical names (see the file comment). */
  stateDict: StateDict;
  layout: ClipTextLayout;
  /** exp(logit_scale) when the checkpoint has one (CLIP's learnt scale, about 100 when trained). */
  logitScale: number | undefined;
  warnings: string[];
}

const invalid = checkpointInvalid;

/** OpenAI names -> canonical names: drop `visual.*`, spell in_proj like the visual tower. */
function openaiView(sd: StateDict): StateDict {
  return renameKeys(sd, (k) => {
    if (k.startsWith("visual.")) return undefined;
    const m = /^(transformer\.resblocks\.\d+\.attn\.)in_proj_(weight|bias)$/.exec(k);
    return m ? `${m[1]}in_proj.${m[2]}` : k;
  });
}

/**
 * Hugging Face names -> canonical names. q/k/v projections are concatenated (rows Q, K, V) into
 * in_proj and `text_projection.weight` is transposed, on read.
 */
function huggingFaceView(sd: StateDict): StateDict {
  const direct = new Map<string, string>();
  const inProj = new Map<string, { parts: string[]; kind: "weight" | "bias" }>();
  const hfBlock = /^text_model\.encoder\.layers\.(\d+)\.(.+)$/;
  const blockNames: Record<string, string> = {
    "layer_norm1.weight": "ln_1.weight",
    "layer_norm1.bias": "ln_1.bias",
    "layer_norm2.weight": "ln_2.weight",
    "layer_norm2.bias": "ln_2.bias",
    "self_attn.out_proj.weight": "attn.out_proj.weight",
    "self_attn.out_proj.bias": "attn.out_proj.bias",
    "mlp.fc1.weight": "mlp.c_fc.weight",
    "mlp.fc1.bias": "mlp.c_fc.bias",
    "mlp.fc2.weight": "mlp.c_proj.weight",
    "mlp.fc2.bias": "mlp.c_proj.bias",
  };
  const fixed: Record<string, string> = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    logit_scale: "logit_scale",
  };
  for (const k of sd.keys()) {
    if (fixed[k]) direct.set(fixed[k], k);
    const m = hfBlock.exec(k);
    if (!m) continue;
    const [, n, rest] = m;
    if (blockNames[rest]) direct.set(`transformer.resblocks.${n}.${blockNames[rest]}`, k);
    const qkv = /^self_attn\.q_proj\.(weight|bias)$/.exec(rest);
    if (qkv) {
      const kind = qkv[1] as "weight" | "bias";
      const base = `text_model.encoder.layers.${n}.self_attn.`;
      inProj.set(`transformer.resblocks.${n}.attn.in_proj.${kind}`, {
        kind,
        parts: ["q_proj", "k_proj", "v_proj"].map((p) => `${base}${p}.${kind}`),
      });
    }
  }
  const projection = sd.has("text_projection.weight") ? "text_projection.weight" : undefined;
  const keys = [...direct.keys(), ...inProj.keys(), ...(projection ? ["text_projection"] : [])];
  const has = (key: string) =>
    direct.has(key) || inProj.has(key) || (key === "text_projection" && !!projection);

  const info = (key: string): TensorInfo => {
    const d = direct.get(key);
    if (d !== undefined) return sd.info(d);
    const qkv = inProj.get(key);
    if (qkv) {
      for (const part of qkv.parts) if (!sd.has(part)) throw missingKey(part);
      const shapes = qkv.parts.map((p) => sd.info(p).shape);
      const rows = shapes.reduce((a, s) => a + (s[0] ?? 0), 0);
      return { dtype: sd.info(qkv.parts[0]).dtype, shape: [rows, ...shapes[0].slice(1)] };
    }
    if (key === "text_projection" && projection) {
      const t = sd.info(projection);
      return { dtype: t.dtype, shape: [...t.shape].reverse() };
    }
    throw missingKey(key);
  };
  const read = (key: string): Float32Array => {
    const d = direct.get(key);
    if (d !== undefined) return sd.read(d);
    const qkv = inProj.get(key);
    if (qkv) {
      const parts = qkv.parts.map((p) => sd.read(p));
      const out = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
      let at = 0;
      for (const p of parts) {
        out.set(p, at);
        at += p.length;
      }
      return out;
    }
    if (key === "text_projection" && projection) {
      const [rows, cols] = sd.info(projection).shape; // [D, W]
      const data = sd.read(projection);
      const out = new Float32Array(data.length);
      for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = data[r * cols + c];
      return out;
    }
    throw missingKey(key);
  };
  return { keys: () => keys, has, info, read, close: () => sd.close(), source: sd.source };
}

/**
 * Check a state dict holding a CLIP text tower (either layout) and infer its configuration.
 * Throws `checkpoint_invalid` naming the first missing or misshapen tensor.
 */
export function inspectClipTextStateDict(
  input: StateDict,
  options: { heads?: number } = {},
): InspectedTextCheckpoint {
  const source = input.source.path ? `${input.source.path}: ` : "";
  const warnings: string[] = [];
  let layout: ClipTextLayout;
  let sd: StateDict;
  if (input.has("text_model.embeddings.token_embedding.weight")) {
    layout = "huggingface";
    sd = huggingFaceView(input);
    if (input.keys().some((k) => k.startsWith("vision_model."))) {
      warnings.push("checkpoint is a whole Hugging Face CLIPModel; using its text_model.* tensors");
    }
  } else if (input.has("token_embedding.weight")) {
    layout = "openai";
    sd = openaiView(input);
    if (input.keys().some((k) => k.startsWith("visual."))) {
      warnings.push("checkpoint is a whole CLIP model; using its text tower (visual.* ignored)");
    }
  } else {
    const keys = input.keys();
    const visualOnly = input.has("conv1.weight") || input.has("visual.conv1.weight");
    throw invalid(
      `${source}not a CLIP text encoder: neither "token_embedding.weight" (OpenAI layout) nor ` +
        `"text_model.embeddings.token_embedding.weight" (Hugging Face layout) is present` +
        (visualOnly
          ? " (this is a visual encoder: Alpha-CLIP checkpoints hold only the visual tower; the text " +
            "weights come from the OpenAI CLIP model they were trained from)"
          : ` (it has ${keys.length} tensors, e.g. ${keys.slice(0, 3).join(", ") || "none"})`),
      "token_embedding.weight",
    );
  }

  const { shapeOf, expectShape, expectResidualBlocks } = shapeChecker(sd, source);

  const emb = shapeOf("token_embedding.weight");
  if (emb.length !== 2 || emb[0] < 1 || emb[1] < 1) {
    throw invalid(
      `${source}tensor "token_embedding.weight" has shape [${emb.join(", ")}], expected [vocab, width]`,
      "token_embedding.weight",
    );
  }
  const [vocabSize, width] = emb;
  const pos = shapeOf("positional_embedding");
  if (pos.length !== 2 || pos[1] !== width || pos[0] < 2) {
    throw invalid(
      `${source}tensor "positional_embedding" has shape [${pos.join(", ")}], expected [context, ${width}]`,
      "positional_embedding",
    );
  }
  const contextLength = pos[0];
  const proj = shapeOf("text_projection");
  if (proj.length !== 2 || proj[0] !== width || proj[1] < 1) {
    throw invalid(
      `${source}tensor "text_projection" has shape [${proj.join(", ")}], expected [${width}, embed_dim]`,
      "text_projection",
    );
  }
  const embedDim = proj[1];

  let layers = 0;
  for (const k of sd.keys()) {
    const m = /^transformer\.resblocks\.(\d+)\./.exec(k);
    if (m) layers = Math.max(layers, Number(m[1]) + 1);
  }
  if (layers === 0) {
    throw invalid(
      `${source}checkpoint has no transformer blocks ("transformer.resblocks.0.*")`,
      "transformer.resblocks.0.ln_1.weight",
    );
  }

  const heads = options.heads ?? width / 64;
  if (!Number.isInteger(heads) || heads < 1 || width % heads !== 0) {
    throw new RegionVqaError(
      "invalid_request",
      options.heads === undefined
        ? `width ${width} is not a multiple of 64, so the head count cannot be assumed: pass --heads`
        : `heads ${options.heads} does not divide width ${width}`,
    );
  }

  expectShape("token_embedding.weight", [vocabSize, width]);
  expectShape("positional_embedding", [contextLength, width]);
  expectShape("text_projection", [width, embedDim]);
  expectShape("ln_final.weight", [width]);
  expectShape("ln_final.bias", [width]);
  const mlpWidth = expectResidualBlocks(layers, width, { sameMlpWidth: true });

  let logitScale: number | undefined;
  if (sd.has("logit_scale")) {
    const info = sd.info("logit_scale");
    if (info.shape.reduce((a, b) => a * b, 1) !== 1 || !FLOAT_DTYPES.includes(info.dtype)) {
      throw invalid(
        `${source}tensor "logit_scale" has shape [${info.shape.join(", ")}] (${info.dtype}), expected a float scalar`,
        "logit_scale",
      );
    }
    logitScale = Math.exp(sd.read("logit_scale")[0]);
  } else {
    warnings.push('checkpoint has no "logit_scale"; the manifest records none');
  }
  if (contextLength !== 77) warnings.push(`context length is ${contextLength}, not CLIP's 77`);

  return {
    config: { width, layers, heads, mlpWidth, contextLength, vocabSize, embedDim },
    stateDict: sd,
    layout,
    logitScale,
    warnings,
  };
}
