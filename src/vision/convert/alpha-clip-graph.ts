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
import type { OnnxGraphBuilder, WeightPrecision } from "../../common/onnx/index.js";
import type { StateDict } from "../checkpoint/index.js";
import type { AlphaClipVisionConfig } from "./alpha-clip-config.js";
import { ClipLayers } from "./clip-layers.js";

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
  const tokens = G * G + 1;
  const layers = new ClipLayers(g, sd, precision);
  const matrix = (name: string, data: Float32Array, dims: number[]) => layers.matrix(name, data, dims);

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

  x = layers.layerNorm(x, "ln_pre");
  let llavaFeatures: string | undefined;
  const blocksToRun = includeEmbed ? L : L - 1;
  for (let i = 0; i < blocksToRun; i++) {
    if (i === config.llavaFeatureLayer) llavaFeatures = x;
    x = layers.residualBlock(x, {
      prefix: `transformer.resblocks.${i}`,
      nodePrefix: `block${i}`,
      width: W,
      heads: H,
    });
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
  const pooled = layers.layerNorm(clsOut, "ln_post");
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
