/**
 * LLaVA-1.5 `mlp2x_gelu` projector weights: Linear(in -> hidden), exact erf GELU, Linear(hidden -> out).
 * Weights are kept in PyTorch layout: row-major [out][in].
 */
import { RegionVqaError } from "../common/errors.js";

export interface ProjectorWeights {
  inWidth: number;
  hiddenWidth: number;
  outWidth: number;
  /** Linear 0 weight, [hiddenWidth][inWidth] row-major. */
  w0: Float32Array;
  b0: Float32Array;
  /** Linear 2 weight, [outWidth][hiddenWidth] row-major. */
  w2: Float32Array;
  b2: Float32Array;
  /** Where the weights came from and how they were stored there (for manifests and messages). */
  source?: { path: string; format: "mmproj-gguf" | "llava-checkpoint"; dtype: string };
}

/** Check the four tensors' shapes fit together; `where` names the file in error messages. */
export function makeProjectorWeights(
  parts: {
    w0: { data: Float32Array; shape: readonly number[] };
    b0: { data: Float32Array; shape: readonly number[] };
    w2: { data: Float32Array; shape: readonly number[] };
    b2: { data: Float32Array; shape: readonly number[] };
  },
  where: string,
  names: { w0: string; b0: string; w2: string; b2: string },
  source?: ProjectorWeights["source"],
): ProjectorWeights {
  const bad = (msg: string) =>
    new RegionVqaError("model_invalid", `projector in ${where}: ${msg}`, { path: where });
  const { w0, b0, w2, b2 } = parts;
  const shapeText = (s: readonly number[]) => `[${s.join(", ")}]`;
  if (w0.shape.length !== 2)
    throw bad(`${names.w0} has shape ${shapeText(w0.shape)}, expected 2-D [hidden, in]`);
  if (w2.shape.length !== 2)
    throw bad(`${names.w2} has shape ${shapeText(w2.shape)}, expected 2-D [out, hidden]`);
  const [hiddenWidth, inWidth] = w0.shape;
  const [outWidth, hidden2] = w2.shape;
  if (hidden2 !== hiddenWidth) {
    throw bad(`${names.w2} takes ${hidden2} inputs but ${names.w0} produces ${hiddenWidth}`);
  }
  if (b0.shape.length !== 1 || b0.shape[0] !== hiddenWidth) {
    throw bad(`${names.b0} has shape ${shapeText(b0.shape)}, expected [${hiddenWidth}]`);
  }
  if (b2.shape.length !== 1 || b2.shape[0] !== outWidth) {
    throw bad(`${names.b2} has shape ${shapeText(b2.shape)}, expected [${outWidth}]`);
  }
  for (const [name, t] of Object.entries(parts)) {
    const n = t.shape.reduce((a, b) => a * b, 1);
    if (t.data.length !== n) throw bad(`${name} has ${t.data.length} values for shape ${shapeText(t.shape)}`);
  }
  return { inWidth, hiddenWidth, outWidth, w0: w0.data, b0: b0.data, w2: w2.data, b2: b2.data, source };
}

/**
 * The projector must accept the vision encoder's feature width and produce the LLM's embedding width;
 * a mismatch means the three models do not belong together.
 */
export function checkProjectorWidths(
  projector: { inWidth: number; outWidth: number },
  widths: { encoderWidth?: number; llmEmbeddingLength?: number },
): void {
  if (widths.encoderWidth !== undefined && widths.encoderWidth !== projector.inWidth) {
    throw new RegionVqaError(
      "model_mismatch",
      `the vision encoder produces ${widths.encoderWidth}-wide features but the projector expects ` +
        `${projector.inWidth}-wide input`,
      { encoderWidth: widths.encoderWidth, projectorInWidth: projector.inWidth },
    );
  }
  if (widths.llmEmbeddingLength !== undefined && widths.llmEmbeddingLength !== projector.outWidth) {
    throw new RegionVqaError(
      "model_mismatch",
      `the projector produces ${projector.outWidth}-wide embeddings but the LLM's embedding length is ` +
        `${widths.llmEmbeddingLength}`,
      { projectorOutWidth: projector.outWidth, llmEmbeddingLength: widths.llmEmbeddingLength },
    );
  }
}

/** Reference projector in float64 (tests, converter self-checks): rows of `features` [T, in] -> [T, out]. */
export function projectReference(weights: ProjectorWeights, features: Float32Array): Float32Array {
  const { inWidth, hiddenWidth, outWidth, w0, b0, w2, b2 } = weights;
  const tokens = features.length / inWidth;
  if (!Number.isInteger(tokens))
    throw new Error(`features length ${features.length} is not a multiple of ${inWidth}`);
  const out = new Float32Array(tokens * outWidth);
  const hidden = new Float64Array(hiddenWidth);
  for (let t = 0; t < tokens; t++) {
    const x = t * inWidth;
    for (let h = 0; h < hiddenWidth; h++) {
      let s = b0[h];
      const row = h * inWidth;
      for (let i = 0; i < inWidth; i++) s += w0[row + i] * features[x + i];
      hidden[h] = 0.5 * s * (1 + erf(s / Math.SQRT2));
    }
    for (let o = 0; o < outWidth; o++) {
      let s = b2[o];
      const row = o * hiddenWidth;
      for (let h = 0; h < hiddenWidth; h++) s += w2[row + h] * hidden[h];
      out[t * outWidth + o] = s;
    }
  }
  return out;
}

/**
 * erf to ~1e-15 relative (series for small |x|, continued fraction for the tail); JavaScript's Math has
 * no erf, and the reference needs to be far more exact than float32.
 */
export function erf(x: number): number {
  const ax = Math.abs(x);
  if (ax < 2.5) {
    // Maclaurin series: erf(x) = 2/sqrt(pi) * sum (-1)^n x^(2n+1) / (n! (2n+1))
    let term = ax;
    let sum = ax;
    const x2 = ax * ax;
    for (let n = 1; n < 100; n++) {
      term *= -x2 / n;
      const add = term / (2 * n + 1);
      sum += add;
      if (Math.abs(add) < 1e-17 * Math.abs(sum)) break;
    }
    const r = (2 / Math.sqrt(Math.PI)) * sum;
    return x < 0 ? -r : r;
  }
  if (ax > 6) return x < 0 ? -1 : 1;
  // erfc(x) = exp(-x^2)/sqrt(pi) * 1/(x + 1/2/(x + 1/(x + 3/2/(x + ...)))) (Lentz-free backward evaluation)
  let f = ax;
  for (let k = 60; k >= 1; k--) f = ax + k / 2 / f;
  const erfc = Math.exp(-ax * ax) / Math.sqrt(Math.PI) / f;
  return x < 0 ? erfc - 1 : 1 - erfc;
}
