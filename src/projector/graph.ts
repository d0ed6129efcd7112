/**
 * The projector as ONNX nodes: MatMul + Add, exact GELU 0.5 * x * (1 + erf(x / sqrt 2)), MatMul + Add
 * (LLaVA's `mlp2x_gelu`, docs/reference.md section 3; llama.cpp's tanh GELU is not it).
 * `appendProjectorNodes` adds them to any graph (the fused encoder + projector converter uses it after
 * `llava_features`); `buildProjectorModel` makes a stand-alone projector model.
 */
import { OnnxGraphBuilder, type OnnxModel, type WeightPrecision } from "../common/onnx/index.js";
import type { ProjectorWeights } from "./weights.js";

export const PROJECTOR_INPUT = "llava_features";
export const PROJECTOR_OUTPUT = "projected";

/** [rows][cols] row-major -> [cols][rows]: MatMul wants the weight as [in, out]. */
function transpose(data: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(data.length);
  for (let r = 0; r < rows; r++) {
    const src = r * cols;
    for (let c = 0; c < cols; c++) out[c * rows + r] = data[src + c];
  }
  return out;
}

/**
 * Append the projector to `g`, reading float32 `input` [..., inWidth]; returns the name of the float32
 * value [..., outWidth]. Weight names start with `prefix` ("mm" gives mm.0.weight ...).
 */
export function appendProjectorNodes(
  g: OnnxGraphBuilder,
  input: string,
  weights: ProjectorWeights,
  options: { precision?: WeightPrecision; prefix?: string } = {},
): string {
  const prefix = options.prefix ?? "mm";
  const precision = options.precision ?? "fp32";
  const { inWidth, hiddenWidth, outWidth } = weights;
  const w0 = g.initializer(
    `${prefix}.0.weight_t`,
    transpose(weights.w0, hiddenWidth, inWidth),
    [inWidth, hiddenWidth],
    {
      precision,
    },
  );
  // Biases stay float32 at any precision (as in mmproj files): they are tiny and fp16 would only add error.
  const b0 = g.initializer(`${prefix}.0.bias`, weights.b0, [hiddenWidth]);
  const w2 = g.initializer(
    `${prefix}.2.weight_t`,
    transpose(weights.w2, outWidth, hiddenWidth),
    [hiddenWidth, outWidth],
    { precision },
  );
  const b2 = g.initializer(`${prefix}.2.bias`, weights.b2, [outWidth]);

  const h = g.node(
    "Add",
    [g.node("MatMul", [input, w0], {}, { name: `${prefix}_0_matmul` }), b0],
    {},
    {
      name: `${prefix}_0_add`,
    },
  );
  // Exact (erf) GELU as LLaVA's nn.GELU(); ORT fuses this pattern into its Gelu kernel on CPU and CUDA.
  const scaled = g.node("Div", [h, g.scalar(Math.SQRT2)], {}, { name: `${prefix}_gelu_div` });
  const erf = g.node("Erf", [scaled], {}, { name: `${prefix}_gelu_erf` });
  const onePlus = g.node("Add", [erf, g.scalar(1)], {}, { name: `${prefix}_gelu_add` });
  const xTimes = g.node("Mul", [h, onePlus], {}, { name: `${prefix}_gelu_mul` });
  const gelu = g.node("Mul", [xTimes, g.scalar(0.5)], {}, { name: `${prefix}_gelu_half` });
  return g.node(
    "Add",
    [g.node("MatMul", [gelu, w2], {}, { name: `${prefix}_2_matmul` }), b2],
    {},
    {
      name: `${prefix}_2_add`,
    },
  );
}

/** Stand-alone projector: input `llava_features` [batch, tokens, in] -> output `projected` [batch, tokens, out]. */
export function buildProjectorModel(
  weights: ProjectorWeights,
  options: { precision?: WeightPrecision } = {},
): OnnxModel {
  const g = new OnnxGraphBuilder({ graphName: "llava_projector" });
  const input = g.input(PROJECTOR_INPUT, "float32", ["batch", "tokens", weights.inWidth]);
  const out = appendProjectorNodes(g, input, weights, options);
  g.output(PROJECTOR_OUTPUT, "float32", ["batch", "tokens", weights.outWidth], out);
  return g.toModel({
    docString: "LLaVA-1.5 mlp2x_gelu projector",
    metadata: {
      in_width: String(weights.inWidth),
      hidden_width: String(weights.hiddenWidth),
      out_width: String(weights.outWidth),
    },
  });
}
