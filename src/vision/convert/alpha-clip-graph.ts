/**
 * The Alpha-CLIP visual encoder as an ONNX graph of standard opset-17 ops (Conv, MatMul,
 * LayerNormalization, Softmax, ...), all computed in float32 (fp16 weights are cast at load). The
 * architecture and key names are in docs/reference.md section 1, the LLaVA feature layer in section 3.
 *
 * Inputs: `image` [batch, 3, R, R] and `alpha` [batch, 1, R, R], float32.
 * Values made available to callers (see `AlphaClipGraphValues`):
 *   llava_features = hidden state after block L-1, CLS dropped: [batch, G*G, W] (what LLaVA projects)
 *   image_embed    = ln_post(CLS after block L) @ proj: [batch, D]
 */
import { floatAttr, type OnnxGraphBuilder, type WeightPrecision } from "../../common/onnx/index.js";
import type { StateDict } from "../checkpoint/index.js";
import type { AlphaClipVisionConfig } from "./alpha-clip-config.js";

export const IMAGE_INPUT = "image";
export const ALPHA_INPUT = "alpha";
export const LLAVA_FEATURES_OUTPUT = "llava_features";
export const IMAGE_EMBED_OUTPUT = "image_embed";

export interface AlphaClipGraphValues {
  /** float32 [batch, G*G, W]. */
  llavaFeatures: string;
  /** float32 [batch, D]; absent when the last block was left out. */
  imageEmbed?: string;
}

export interface AlphaClipGraphOptions {
  precision?: WeightPrecision;
  /** Build `image_embed` (needs the last block, ln_post and proj). Default true. */
  includeImageEmbed?: boolean;
  /** Use an all-zero alpha conv when the state dict has no `conv1_alpha.weight` (plain CLIP). */
  zeroAlphaConv?: boolean;
}

/** [rows][cols] row-major -> [cols][rows], optionally scaling rows [0, scaleRows) by `scale`. */
function transpose(data: Float32Array, rows: number, cols: number, scaleRows = 0, scale = 1): Float32Array {
  const out = new Float32Array(data.length);
  for (let r = 0; r < rows; r++) {
    const f = r < scaleRows ? scale : 1;
    const src = r * cols;
    for (let c = 0; c < cols; c++) out[c * rows + r] = data[src + c] * f;
  }
  return out;
}

/**
 * Add the encoder to `g` (declaring the `image` and `alpha` inputs) and return its value names.
 * Outputs are not declared here: the caller decides which values become graph outputs, so another
 * piece (e.g. the LLaVA projector) can be appended to `llavaFeatures`.
 */
export function appendAlphaClipVisionNodes(
  g: OnnxGraphBuilder,
  sd: StateDict,
  config: AlphaClipVisionConfig,
  options: AlphaClipGraphOptions = {},
): AlphaClipGraphValues {
  const { width: W, heads: H, patchSize: P, imageSize: R, gridSize: G, layers: L } = config;
  const precision = options.precision ?? "fp32";
  const includeEmbed = options.includeImageEmbed ?? true;
  const headDim = W / H;
  const tokens = G * G + 1;
  // Matrices follow `precision`; 1-D vectors (biases, norms) stay float32: tiny, and fp16 only adds error.
  const matrix = (name: string, data: Float32Array, dims: number[]) =>
    g.initializer(name, data, dims, { precision });
  const vector = (name: string, key = name) => g.initializer(name, sd.read(key), sd.info(key).shape);

  const image = g.input(IMAGE_INPUT, "float32", ["batch", 3, R, R]);
  const alpha = g.input(ALPHA_INPUT, "float32", ["batch", 1, R, R]);

  // conv1(image) + conv1_alpha(alpha) is one convolution over the 4 stacked channels.
  const rgbWeight = sd.read("conv1.weight");
  const alphaWeight = options.zeroAlphaConv ? new Float32Array(W * P * P) : sd.read("conv1_alpha.weight");
  const patchWeight = new Float32Array(W * 4 * P * P);
  for (let o = 0; o < W; o++) {
    patchWeight.set(rgbWeight.subarray(o * 3 * P * P, (o + 1) * 3 * P * P), o * 4 * P * P);
    patchWeight.set(alphaWeight.subarray(o * P * P, (o + 1) * P * P), o * 4 * P * P + 3 * P * P);
  }
  const stacked = g.node("Concat", [image, alpha], { axis: 1 }, { name: "stack_image_alpha" });
  const patches = g.node(
    "Conv",
    [stacked, matrix("conv1_and_alpha.weight", patchWeight, [W, 4, P, P])],
    { kernel_shape: [P, P], strides: [P, P] },
    { name: "patch_embed" },
  );
  // [B, W, G, G] -> [B, G*G, W] (patches row-major, as CLIP's flatten + permute)
  const flat = g.node("Reshape", [patches, g.int64([0, W, G * G])], {}, { name: "patches_flatten" });
  const patchTokens = g.node("Transpose", [flat], { perm: [0, 2, 1] }, { name: "patches_to_tokens" });

  // Prepend the class token, broadcast to the batch size.
  const batch = g.node(
    "Slice",
    [g.node("Shape", [image]), g.int64([0]), g.int64([1])],
    {},
    { name: "batch_size" },
  );
  const clsShape = g.node("Concat", [batch, g.int64([1, W])], { axis: 0 }, { name: "cls_shape" });
  const cls = g.node(
    "Expand",
    [g.initializer("class_embedding", sd.read("class_embedding"), [1, 1, W]), clsShape],
    {},
    { name: "cls_expand" },
  );
  const withCls = g.node("Concat", [cls, patchTokens], { axis: 1 }, { name: "prepend_cls" });
  const positions = matrix("positional_embedding", sd.read("positional_embedding"), [tokens, W]);
  let x = g.node("Add", [withCls, positions], {}, { name: "add_positions" });

  const layerNorm = (input: string, prefix: string) =>
    g.node(
      "LayerNormalization",
      [input, vector(`${prefix}.weight`), vector(`${prefix}.bias`)],
      { axis: -1, epsilon: floatAttr(1e-5) },
      { name: prefix.replace(/\./g, "_") },
    );
  const linear = (input: string, prefix: string, outDim: number, inDim: number, qRows = 0, qScale = 1) => {
    const wName = `${prefix}.weight_t`;
    const w = matrix(wName, transpose(sd.read(`${prefix}.weight`), outDim, inDim, qRows, qScale), [
      inDim,
      outDim,
    ]);
    let bias = sd.read(`${prefix}.bias`);
    if (qRows > 0) bias = bias.map((v, i) => (i < qRows ? v * qScale : v));
    const b = g.initializer(`${prefix}.bias`, bias, [outDim]);
    const node = prefix.replace(/\./g, "_");
    return g.node(
      "Add",
      [g.node("MatMul", [input, w], {}, { name: `${node}_matmul` }), b],
      {},
      { name: `${node}_add` },
    );
  };

  x = layerNorm(x, "ln_pre");
  let llavaFeatures: string | undefined;
  const blocksToRun = includeEmbed ? L : L - 1;
  for (let i = 0; i < blocksToRun; i++) {
    if (i === config.llavaFeatureLayer) llavaFeatures = x;
    const p = `transformer.resblocks.${i}`;
    const n = `block${i}`;
    // Attention: one in_proj MatMul (rows Q, K, V; Q pre-scaled by head_dim^-0.5), then per-head
    // softmax(q k^T) v in [B, H, T, hd] layout.
    const qkv = linear(layerNorm(x, `${p}.ln_1`), `${p}.attn.in_proj`, 3 * W, W, W, headDim ** -0.5);
    const split = g.node("Reshape", [qkv, g.int64([0, 0, 3 * H, headDim])], {}, { name: `${n}_qkv_heads` });
    const headsFirst = g.node("Transpose", [split], { perm: [0, 2, 1, 3] }, { name: `${n}_qkv_transpose` });
    const [q, k, v] = g.nodeOutputs(
      "Split",
      [headsFirst, g.int64([H, H, H])],
      { axis: 1 },
      {
        name: `${n}_qkv_split`,
        outputs: [g.uniqueName(`${n}_q`), g.uniqueName(`${n}_k`), g.uniqueName(`${n}_v`)],
      },
    );
    const kT = g.node("Transpose", [k], { perm: [0, 1, 3, 2] }, { name: `${n}_k_transpose` });
    const scores = g.node("MatMul", [q, kT], {}, { name: `${n}_scores` });
    const weights = g.node("Softmax", [scores], { axis: -1 }, { name: `${n}_softmax` });
    const attended = g.node("MatMul", [weights, v], {}, { name: `${n}_attend` });
    const merged = g.node(
      "Reshape",
      [
        g.node("Transpose", [attended], { perm: [0, 2, 1, 3] }, { name: `${n}_heads_last` }),
        g.int64([0, 0, W]),
      ],
      {},
      { name: `${n}_merge_heads` },
    );
    x = g.node("Add", [x, linear(merged, `${p}.attn.out_proj`, W, W)], {}, { name: `${n}_attn_residual` });

    // MLP: c_fc, QuickGELU x * sigmoid(1.702 x), c_proj.
    const hiddenDim = sd.info(`${p}.mlp.c_fc.weight`).shape[0];
    const fc = linear(layerNorm(x, `${p}.ln_2`), `${p}.mlp.c_fc`, hiddenDim, W);
    const gate = g.node(
      "Sigmoid",
      [g.node("Mul", [fc, g.scalar(1.702)], {}, { name: `${n}_gelu_scale` })],
      {},
      {
        name: `${n}_gelu_sigmoid`,
      },
    );
    const act = g.node("Mul", [fc, gate], {}, { name: `${n}_gelu_mul` });
    x = g.node("Add", [x, linear(act, `${p}.mlp.c_proj`, W, hiddenDim)], {}, { name: `${n}_mlp_residual` });
  }
  if (blocksToRun === config.llavaFeatureLayer) llavaFeatures = x;
  if (llavaFeatures === undefined) throw new Error("llavaFeatureLayer is out of range");

  const dropCls = g.node(
    "Slice",
    [llavaFeatures, g.int64([1]), g.int64([tokens]), g.int64([1])],
    {},
    { name: "drop_cls" },
  );
  if (!includeEmbed) return { llavaFeatures: dropCls };

  const clsOut = g.node("Gather", [x, g.int64([0])], { axis: 1 }, { name: "take_cls" }); // [B, 1, W]
  const pooled = layerNorm(clsOut, "ln_post");
  const embed = g.node(
    "MatMul",
    [pooled, matrix("proj", sd.read("proj"), [W, config.outputDim])],
    {},
    {
      name: "proj",
    },
  );
  const imageEmbed = g.node(
    "Reshape",
    [embed, g.int64([0, config.outputDim])],
    {},
    { name: "image_embed_flatten" },
  );
  return { llavaFeatures: dropCls, imageEmbed };
}
