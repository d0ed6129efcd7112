/**
 * Alpha-CLIP's zero-shot classification (docs/reference.md section 6.2): L2-normalise the region's
 * image feature and each label's text feature, score = 100 * cosine, softmax over the labels.
 */
import { RegionVqaError } from "../common/errors.js";
import { makeTensor, type Tensor } from "../common/tensor.js";

/** The literal Alpha-CLIP multiplies cosine similarities by (not the checkpoint's logit_scale). */
export const ALPHA_CLIP_ZERO_SHOT_SCALE = 100;
/** Alpha-CLIP's single zero-shot prompt template. */
export const ZERO_SHOT_TEMPLATE = "a photo of a {label}.";

/** Each row of a [N, D] tensor divided by its L2 norm (computed in float64). */
export function l2NormalizeRows(t: Tensor): Tensor {
  if (t.shape.length !== 2) throw new RegionVqaError("invalid_request", "expected a [N, D] tensor");
  const [n, d] = t.shape;
  const out = new Float32Array(n * d);
  for (let r = 0; r < n; r++) {
    let sq = 0;
    for (let i = 0; i < d; i++) sq += t.data[r * d + i] ** 2;
    const inv = sq > 0 ? 1 / Math.sqrt(sq) : 0;
    for (let i = 0; i < d; i++) out[r * d + i] = t.data[r * d + i] * inv;
  }
  return makeTensor(out, [n, d]);
}

/**
 * scale * normalize(image) @ normalize(text)^T: [M, N] logits for M image features [M, D] and N text
 * features [N, D] (both unnormalised).
 */
export function zeroShotLogits(image: Tensor, text: Tensor, scale = ALPHA_CLIP_ZERO_SHOT_SCALE): Tensor {
  const a = l2NormalizeRows(image);
  const b = l2NormalizeRows(text);
  const [m, d] = a.shape;
  const [n, d2] = b.shape;
  if (d !== d2) {
    throw new RegionVqaError(
      "model_mismatch",
      `image features have ${d} dimensions but text features ${d2}: the two towers do not belong together`,
    );
  }
  const out = new Float32Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let k = 0; k < d; k++) s += a.data[i * d + k] * b.data[j * d + k];
      out[i * n + j] = scale * s;
    }
  }
  return makeTensor(out, [m, n]);
}

/** Softmax over the last axis of a [M, N] tensor (float64 math). */
export function softmaxRows(t: Tensor): Tensor {
  const [m, n] = t.shape;
  const out = new Float32Array(m * n);
  for (let i = 0; i < m; i++) {
    let max = -Infinity;
    for (let j = 0; j < n; j++) max = Math.max(max, t.data[i * n + j]);
    let sum = 0;
    const e = new Float64Array(n);
    for (let j = 0; j < n; j++) sum += e[j] = Math.exp(t.data[i * n + j] - max);
    for (let j = 0; j < n; j++) out[i * n + j] = e[j] / sum;
  }
  return makeTensor(out, [m, n]);
}
