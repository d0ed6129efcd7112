/**
 * A plain float64 statement of the CLIP text forward pass (docs/reference.md section 6), written
 * independently of the ONNX graph. The converter runs it on a short prompt to check the model it just
 * wrote; being O(tokens) it only computes positions 0..EOT, which is all the pooled row depends on.
 */
import type { StateDict } from "../vision/checkpoint/index.js";
import type { ClipTextConfig } from "./config.js";

/** Index of the first largest id: the row CLIP pools. */
export function eotIndex(ids: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < ids.length; i++) if (ids[i] > ids[best]) best = i;
  return best;
}

function layerNorm(x: Float64Array, rows: number, w: Float32Array, b: Float32Array): Float64Array {
  const n = w.length;
  const out = new Float64Array(x.length);
  for (let r = 0; r < rows; r++) {
    let mean = 0;
    for (let i = 0; i < n; i++) mean += x[r * n + i];
    mean /= n;
    let variance = 0;
    for (let i = 0; i < n; i++) variance += (x[r * n + i] - mean) ** 2;
    const inv = 1 / Math.sqrt(variance / n + 1e-5);
    for (let i = 0; i < n; i++) out[r * n + i] = (x[r * n + i] - mean) * inv * w[i] + b[i];
  }
  return out;
}

/** x [rows, inDim] @ W^T + b for a PyTorch Linear weight W [outDim, inDim]. */
function linear(x: Float64Array, rows: number, w: Float32Array, b: Float32Array): Float64Array {
  const outDim = b.length;
  const inDim = w.length / outDim;
  const out = new Float64Array(rows * outDim);
  for (let r = 0; r < rows; r++) {
    for (let o = 0; o < outDim; o++) {
      let s = b[o];
      const wo = o * inDim;
      const xr = r * inDim;
      for (let i = 0; i < inDim; i++) s += x[xr + i] * w[wo + i];
      out[r * outDim + o] = s;
    }
  }
  return out;
}

/**
 * Unnormalised text features for each row of `ids` (any length; only positions 0..EOT are used).
 * `sd` holds the canonical names of `inspectClipTextStateDict`.
 */
export function clipTextFeaturesReference(
  sd: StateDict,
  config: ClipTextConfig,
  rows: ArrayLike<number>[],
): Float64Array[] {
  const { width: W, heads: H, layers: L, embedDim: D } = config;
  const hd = W / H;
  const table = sd.read("token_embedding.weight");
  const positional = sd.read("positional_embedding");
  const projection = sd.read("text_projection");
  const blocks = Array.from({ length: L }, (_, i) => {
    const p = `transformer.resblocks.${i}.`;
    const r = (k: string) => sd.read(p + k);
    return {
      ln1: [r("ln_1.weight"), r("ln_1.bias")],
      inW: r("attn.in_proj.weight"),
      inB: r("attn.in_proj.bias"),
      outW: r("attn.out_proj.weight"),
      outB: r("attn.out_proj.bias"),
      ln2: [r("ln_2.weight"), r("ln_2.bias")],
      fcW: r("mlp.c_fc.weight"),
      fcB: r("mlp.c_fc.bias"),
      projW: r("mlp.c_proj.weight"),
      projB: r("mlp.c_proj.bias"),
    };
  });
  const lnFinal = [sd.read("ln_final.weight"), sd.read("ln_final.bias")];

  return rows.map((ids) => {
    const T = eotIndex(ids) + 1;
    const x = new Float64Array(T * W);
    for (let t = 0; t < T; t++) {
      for (let i = 0; i < W; i++) x[t * W + i] = table[ids[t] * W + i] + positional[t * W + i];
    }
    for (const b of blocks) {
      const qkv = linear(layerNorm(x, T, b.ln1[0], b.ln1[1]), T, b.inW, b.inB); // [T, 3W]
      const attended = new Float64Array(T * W);
      const scale = 1 / Math.sqrt(hd);
      for (let h = 0; h < H; h++) {
        for (let q = 0; q < T; q++) {
          // Causal: keys 0..q only.
          const scores = new Float64Array(q + 1);
          let max = -Infinity;
          for (let k = 0; k <= q; k++) {
            let s = 0;
            for (let d = 0; d < hd; d++) s += qkv[q * 3 * W + h * hd + d] * qkv[k * 3 * W + W + h * hd + d];
            scores[k] = s * scale;
            max = Math.max(max, scores[k]);
          }
          let sum = 0;
          for (let k = 0; k <= q; k++) sum += scores[k] = Math.exp(scores[k] - max);
          for (let d = 0; d < hd; d++) {
            let s = 0;
            for (let k = 0; k <= q; k++) s += scores[k] * qkv[k * 3 * W + 2 * W + h * hd + d];
            attended[q * W + h * hd + d] = s / sum;
          }
        }
      }
      const attnOut = linear(attended, T, b.outW, b.outB);
      for (let i = 0; i < x.length; i++) x[i] += attnOut[i];
      const fc = linear(layerNorm(x, T, b.ln2[0], b.ln2[1]), T, b.fcW, b.fcB);
      for (let i = 0; i < fc.length; i++) fc[i] = fc[i] / (1 + Math.exp(-1.702 * fc[i]));
      const mlpOut = linear(fc, T, b.projW, b.projB);
      for (let i = 0; i < x.length; i++) x[i] += mlpOut[i];
    }
    const last = layerNorm(x.subarray((T - 1) * W, T * W), 1, lnFinal[0], lnFinal[1]);
    const out = new Float64Array(D);
    for (let i = 0; i < W; i++) for (let d = 0; d < D; d++) out[d] += last[i] * projection[i * D + d];
    return out;
  });
}
