/**
 * The layers both CLIP towers are made of, as ONNX nodes: LayerNorm (eps 1e-5), Linear (weight stored
 * pre-transposed for MatMul) and the pre-LN residual attention block of CLIP's `Transformer`
 * (`x + attn(ln_1(x))`, then `x + c_proj(QuickGELU(c_fc(ln_2(x))))`). The Alpha-CLIP visual encoder uses
 * the block as is; the text encoder adds a causal mask (docs/reference.md sections 1 and 6).
 *
 * Weights are read from a state dict under the visual tower's names: `{prefix}.ln_1.*`,
 * `{prefix}.attn.in_proj.{weight,bias}` (rows Q, K, V), `{prefix}.attn.out_proj.*`, `{prefix}.ln_2.*`,
 * `{prefix}.mlp.c_fc.*`, `{prefix}.mlp.c_proj.*`. Other layouts are presented under these names by a
 * renaming view (see `renameKeys`).
 */
import { floatAttr, type OnnxGraphBuilder, type WeightPrecision } from "../../common/onnx/index.js";
import type { StateDict } from "../checkpoint/index.js";

/** [rows][cols] row-major -> [cols][rows], optionally scaling rows [0, scaleRows) by `scale`. */
export function transposeMatrix(
  data: Float32Array,
  rows: number,
  cols: number,
  scaleRows = 0,
  scale = 1,
): Float32Array {
  const out = new Float32Array(data.length);
  for (let r = 0; r < rows; r++) {
    const f = r < scaleRows ? scale : 1;
    const src = r * cols;
    for (let c = 0; c < cols; c++) out[c * rows + r] = data[src + c] * f;
  }
  return out;
}

export interface ResidualBlockOptions {
  /** State-dict prefix of the block, e.g. `transformer.resblocks.3`. */
  prefix: string;
  /** Prefix of the block's node names, e.g. `block3`. */
  nodePrefix: string;
  width: number;
  heads: number;
  /** A float32 value added to the attention scores [.., T, T] before the softmax (e.g. a causal mask). */
  attentionMask?: string;
}

export class ClipLayers {
  constructor(
    readonly g: OnnxGraphBuilder,
    readonly sd: StateDict,
    /** Matrices follow it; 1-D vectors (biases, norms) stay float32: tiny, and fp16 only adds error. */
    readonly precision: WeightPrecision,
  ) {}

  /** A matrix weight stored in `precision`; returns the float32 value to consume. */
  matrix(name: string, data: Float32Array, dims: number[]): string {
    return this.g.initializer(name, data, dims, { precision: this.precision });
  }

  /** A state-dict tensor as a float32 initializer (for vectors). */
  vector(name: string, key = name): string {
    return this.g.initializer(name, this.sd.read(key), this.sd.info(key).shape);
  }

  layerNorm(input: string, prefix: string): string {
    return this.g.node(
      "LayerNormalization",
      [input, this.vector(`${prefix}.weight`), this.vector(`${prefix}.bias`)],
      { axis: -1, epsilon: floatAttr(1e-5) },
      { name: prefix.replace(/\./g, "_") },
    );
  }

  /**
   * `input @ W^T + b` for the PyTorch Linear `{prefix}.weight` [outDim, inDim] and `{prefix}.bias`;
   * rows [0, qRows) of W and b are multiplied by `qScale` (the attention's query scaling, folded in).
   */
  linear(input: string, prefix: string, outDim: number, inDim: number, qRows = 0, qScale = 1): string {
    const { g, sd } = this;
    const w = this.matrix(
      `${prefix}.weight_t`,
      transposeMatrix(sd.read(`${prefix}.weight`), outDim, inDim, qRows, qScale),
      [inDim, outDim],
    );
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
  }

  /** One residual attention block on x [B, T, W]; returns its output [B, T, W]. */
  residualBlock(x: string, options: ResidualBlockOptions): string {
    const { g, sd } = this;
    const { prefix: p, nodePrefix: n, width: W, heads: H } = options;
    const headDim = W / H;
    // Attention: one in_proj MatMul (rows Q, K, V; Q pre-scaled by head_dim^-0.5), then per-head
    // softmax(q k^T [+ mask]) v in [B, H, T, hd] layout.
    const qkv = this.linear(
      this.layerNorm(x, `${p}.ln_1`),
      `${p}.attn.in_proj`,
      3 * W,
      W,
      W,
      headDim ** -0.5,
    );
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
    let scores = g.node("MatMul", [q, kT], {}, { name: `${n}_scores` });
    if (options.attentionMask !== undefined) {
      scores = g.node("Add", [scores, options.attentionMask], {}, { name: `${n}_mask` });
    }
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
    x = g.node(
      "Add",
      [x, this.linear(merged, `${p}.attn.out_proj`, W, W)],
      {},
      { name: `${n}_attn_residual` },
    );

    // MLP: c_fc, QuickGELU x * sigmoid(1.702 x), c_proj.
    const hiddenDim = sd.info(`${p}.mlp.c_fc.weight`).shape[0];
    const fc = this.linear(this.layerNorm(x, `${p}.ln_2`), `${p}.mlp.c_fc`, hiddenDim, W);
    const gate = g.node(
      "Sigmoid",
      [g.node("Mul", [fc, g.scalar(1.702)], {}, { name: `${n}_gelu_scale` })],
      {},
      {
        name: `${n}_gelu_sigmoid`,
      },
    );
    const act = g.node("Mul", [fc, gate], {}, { name: `${n}_gelu_mul` });
    return g.node(
      "Add",
      [x, this.linear(act, `${p}.mlp.c_proj`, W, hiddenDim)],
      {},
      { name: `${n}_mlp_residual` },
    );
  }
}
