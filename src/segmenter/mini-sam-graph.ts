/**
 * The ONNX graphs of the bundled shapes-world segmenter (tools/segmenter/model.py), built with the
 * project's own ONNX writer from its trained weights. Its inputs and outputs are those of the SAM 2.1
 * ONNX export (docs/reference.md section 8):
 *
 *   encoder: pixel_values f32 [1, 3, S, S] -> image_embeddings.0/1/2 f32 [1, Ck, S/sk, S/sk]
 *   decoder: image_embeddings.0/1/2, input_points f32 [1, N, n, 2], input_labels i64 [1, N, n],
 *            input_boxes f32 [1, nb, 4] (nb 0 or 1)
 *            -> iou_scores [1, N, 3], pred_masks [1, N, 3, S/s0, S/s0] (logits), object_score_logits [1, N, 1]
 *
 * Each node mirrors one line of the PyTorch forward, so the trained weights mean the same here. The
 * same builder with SAM 2.1-tiny's sizes (1024 input, 32/64/256 channels at strides 4/8/16, 256 x 256
 * masks) and random weights is the full-size stand-in graph of the tests and benchmarks.
 */
import { OnnxGraphBuilder, type OnnxModel, floatAttr } from "../common/onnx/index.js";
import type { StateDict } from "../vision/checkpoint/index.js";
import type { SegmenterConfig } from "./types.js";

export interface MiniSamArchitecture {
  imageSize: number;
  embedChannels: [number, number, number];
  /** Strides of the three embeddings: [s, 2s, 4s]; masks come out at the first one's resolution. */
  embedStrides: [number, number, number];
  decoderChannels: number;
  /** Gaussian widths (input-frame pixels) of the point maps at the finest and the coarsest level. */
  pointSigma: [number, number];
  boxSoftness: number;
  numMasks: number;
  mean: [number, number, number];
  std: [number, number, number];
}

/** The bundled shapes segmenter (tools/segmenter/model.py CONFIG). */
export const SHAPES_SEGMENTER_ARCHITECTURE: MiniSamArchitecture = {
  imageSize: 256,
  embedChannels: [8, 16, 48],
  embedStrides: [2, 4, 8],
  decoderChannels: 48,
  pointSigma: [2.5, 10],
  boxSoftness: 1.5,
  numMasks: 3,
  mean: [0.485, 0.456, 0.406],
  std: [0.229, 0.224, 0.225],
};

/** The I/O sizes of onnx-community/sam2.1-hiera-tiny-ONNX, with a small convolutional body. */
export const SAM21_TINY_SHAPED_ARCHITECTURE: MiniSamArchitecture = {
  ...SHAPES_SEGMENTER_ARCHITECTURE,
  imageSize: 1024,
  embedChannels: [32, 64, 256],
  embedStrides: [4, 8, 16],
  decoderChannels: 64,
  pointSigma: [5, 20],
  boxSoftness: 3,
};

/** The manifest config a folder of these graphs gets (`readSegmenterManifest` reads it back). */
export function miniSamConfig(arch: MiniSamArchitecture): SegmenterConfig {
  return {
    family: "sam2",
    imageSize: arch.imageSize,
    resize: "stretch",
    mean: arch.mean,
    std: arch.std,
    maskSize: arch.imageSize / arch.embedStrides[0],
    encoder: "vision_encoder.onnx",
    decoder: "prompt_encoder_mask_decoder.onnx",
    architecture: arch,
  };
}

/** Weights by PyTorch name (`encoder.c0a.weight`, ...). */
type Weights = Pick<StateDict, "read" | "info">;

class Builder {
  readonly g: OnnxGraphBuilder;
  constructor(
    name: string,
    private readonly weights: Weights,
  ) {
    this.g = new OnnxGraphBuilder({ graphName: name, producerName: "region-vqa mini-sam" });
  }

  weight(key: string): string {
    return this.g.initializer(key, this.weights.read(key), this.weights.info(key).shape);
  }

  conv(
    x: string,
    key: string,
    options: { stride?: number; dilation?: number; kernel?: number } = {},
  ): string {
    const k = options.kernel ?? 3;
    const d = options.dilation ?? 1;
    const pad = k === 1 ? 0 : d;
    return this.g.node("Conv", [x, this.weight(`${key}.weight`), this.weight(`${key}.bias`)], {
      kernel_shape: [k, k],
      strides: [options.stride ?? 1, options.stride ?? 1],
      dilations: [d, d],
      pads: [pad, pad, pad, pad],
    });
  }

  relu(x: string): string {
    return this.g.node("Relu", [x]);
  }
}

/** Encoder graph: pixel_values -> image_embeddings.0/1/2. */
export function buildMiniSamEncoder(arch: MiniSamArchitecture, weights: Weights): OnnxModel {
  const b = new Builder("mini_sam_encoder", weights);
  const { g } = b;
  const S = arch.imageSize;
  const [c0, c1, c2] = arch.embedChannels;
  const [s0, s1, s2] = arch.embedStrides;
  const x = g.input("pixel_values", "float32", ["batch_size", 3, S, S]);
  const e0 = b.relu(b.conv(b.relu(b.conv(x, "encoder.c0a", { stride: s0 })), "encoder.c0b"));
  const e1 = b.relu(b.conv(b.relu(b.conv(e0, "encoder.c1a", { stride: 2 })), "encoder.c1b"));
  const h = b.relu(b.conv(b.relu(b.conv(e1, "encoder.c2a", { stride: 2 })), "encoder.c2b"));
  const e2 = b.conv(h, "encoder.c2c", { dilation: 2 });
  g.output("image_embeddings.0", "float32", ["batch_size", c0, S / s0, S / s0], e0);
  g.output("image_embeddings.1", "float32", ["batch_size", c1, S / s1, S / s1], e1);
  g.output("image_embeddings.2", "float32", ["batch_size", c2, S / s2, S / s2], e2);
  return g.toModel({ docString: "region-vqa miniature SAM 2.1-style image encoder" });
}

/** Decoder graph: embeddings + prompts -> iou_scores, pred_masks, object_score_logits. */
export function buildMiniSamDecoder(arch: MiniSamArchitecture, weights: Weights): OnnxModel {
  const b = new Builder("mini_sam_decoder", weights);
  const { g } = b;
  const S = arch.imageSize;
  const [c0, c1, c2] = arch.embedChannels;
  const [s0, s1, s2] = arch.embedStrides;
  const n0 = S / s0;
  const n2 = S / s2;
  const K = arch.numMasks;
  const emb0 = g.input("image_embeddings.0", "float32", [1, c0, n0, n0]);
  const emb1 = g.input("image_embeddings.1", "float32", [1, c1, S / s1, S / s1]);
  const emb2 = g.input("image_embeddings.2", "float32", [1, c2, n2, n2]);
  const pointsIn = g.input("input_points", "float32", [1, "num_prompts", "num_points", 2]);
  const labelsIn = g.input("input_labels", "int64", [1, "num_prompts", "num_points"]);
  const boxesIn = g.input("input_boxes", "float32", [1, "num_boxes", 4]);

  const axis0 = g.int64([0]);
  // One row per prompt set: P = N (the image batch is 1).
  const points = g.node("Add", [g.node("Squeeze", [pointsIn, axis0]), g.scalar(0.5)]); // [P, n, 2]
  const labels = g.node("Squeeze", [labelsIn, axis0]); // [P, n]
  const P = g.node("Slice", [g.node("Shape", [pointsIn]), g.int64([1]), g.int64([2])]); // [1] = N
  const expandTo = (value: string, channels: number, side: number) =>
    g.node("Expand", [value, g.node("Concat", [P, g.int64([channels, side, side])], { axis: 0 })]);
  const e0 = expandTo(emb0, c0, n0);
  const e1 = expandTo(emb1, c1, S / s1);
  const e2 = expandTo(emb2, c2, n2);

  // Named constants are made once and shared (the builder refuses a name twice).
  const shared = new Map<string, string>();
  const once = (name: string, make: (name: string) => string) => {
    if (!shared.has(name)) shared.set(name, make(name));
    return shared.get(name)!;
  };
  const gridX = (side: number, stride: number) => {
    const c = Float32Array.from({ length: side }, (_, i) => (i + 0.5) * stride);
    return {
      x: once(`grid_x_${side}`, (n) => g.initializer(n, c, [1, 1, 1, side])),
      y: once(`grid_y_${side}`, (n) => g.initializer(n, c, [1, 1, side, 1])),
    };
  };
  const unsq = (x: string, axes: number[]) => g.node("Unsqueeze", [x, g.int64(axes)]);
  const gather = (x: string, index: number, axis: number) =>
    g.node("Gather", [x, g.int64([index])], { axis }); // keeps the axis (index is 1-D)
  const sumAxis1 = (x: string) => g.node("ReduceSum", [x, g.int64([1])], { keepdims: 1 });

  // Point maps: Gaussians at the points, split by label (other labels, e.g. -10 padding, count for nothing).
  const px = unsq(g.node("Squeeze", [gather(points, 0, 2), g.int64([2])]), [2, 3]); // [P, n, 1, 1]
  const py = unsq(g.node("Squeeze", [gather(points, 1, 2), g.int64([2])]), [2, 3]);
  const isLabel = (v: number) => {
    const value = g.rawInitializer(
      `label_${v}`,
      "int64",
      [],
      new Uint8Array(BigInt64Array.of(BigInt(v)).buffer),
    );
    return unsq(g.node("Cast", [g.node("Equal", [labels, value])], { to: 1 }), [2, 3]);
  };
  const pos = isLabel(1);
  const neg = isLabel(0);
  const pointMaps = (side: number, stride: number, sigma: number) => {
    const { x, y } = gridX(side, stride);
    const dx = g.node("Sub", [x, px]);
    const dy = g.node("Sub", [y, py]);
    const d2 = g.node("Add", [g.node("Mul", [dx, dx]), g.node("Mul", [dy, dy])]);
    const gauss = g.node("Exp", [g.node("Mul", [d2, g.scalar(-0.5 / (sigma * sigma))])]);
    return { pos: sumAxis1(g.node("Mul", [gauss, pos])), neg: sumAxis1(g.node("Mul", [gauss, neg])) };
  };
  // Box map: product of four sigmoids, summed over the (0 or 1) boxes, shared by every prompt set.
  const boxMap = (side: number, stride: number, channelsLike: string) => {
    const { x, y } = gridX(side, stride);
    const t = g.scalar(1 / arch.boxSoftness);
    const coord = (i: number) => unsq(g.node("Squeeze", [gather(boxesIn, i, 2), g.int64([0, 2])]), [0, 2, 3]); // [1, nb, 1, 1]
    const sig = (a: string, bb: string) => g.node("Sigmoid", [g.node("Mul", [g.node("Sub", [a, bb]), t])]);
    const inside = g.node("Mul", [
      g.node("Mul", [sig(x, coord(0)), sig(coord(2), x)]),
      g.node("Mul", [sig(y, coord(1)), sig(coord(3), y)]),
    ]); // [1, nb, s, s]
    const summed = sumAxis1(inside); // [1, 1, s, s]
    return g.node("Expand", [summed, g.node("Shape", [channelsLike])]);
  };
  const pooledDistance = (emb: string, weights: string) => {
    const total = g.node("ReduceSum", [weights, g.int64([2, 3])], { keepdims: 1 });
    const w = g.node("Div", [weights, g.node("Add", [total, g.scalar(1e-6)])]);
    const mean = g.node("ReduceSum", [g.node("Mul", [emb, w]), g.int64([2, 3])], { keepdims: 1 });
    const diff = g.node("Sub", [emb, mean]);
    return g.node("ReduceMean", [g.node("Mul", [diff, diff])], { axes: [1], keepdims: 1 });
  };

  const [sig0, sig2] = arch.pointSigma;
  const m2 = pointMaps(n2, s2, sig2);
  const box2 = boxMap(n2, s2, m2.pos);
  let h = g.node("Concat", [e2, m2.pos, m2.neg, box2, pooledDistance(e2, m2.pos)], { axis: 1 });
  h = b.relu(b.conv(h, "decoder.t1"));
  h = b.relu(b.conv(h, "decoder.t2", { dilation: 2 }));
  h = b.relu(b.conv(h, "decoder.t3", { dilation: 4 }));
  const flat = (x: string) => g.node("Flatten", [x], { axis: 1 });
  const pooled = g.node(
    "Concat",
    [flat(g.node("GlobalAveragePool", [h])), flat(g.node("GlobalMaxPool", [h]))],
    { axis: 1 },
  );
  const scores = g.node("Gemm", [pooled, b.weight("decoder.head.weight"), b.weight("decoder.head.bias")], {
    transB: 1,
    alpha: floatAttr(1),
    beta: floatAttr(1),
  }); // [P, K + 1]
  const up2 = (x: string) =>
    g.node("Resize", [x, "", once("scales_x2", (n) => g.initializer(n, Float32Array.of(1, 1, 2, 2), [4]))], {
      mode: "linear",
      coordinate_transformation_mode: "half_pixel",
    });
  let u = up2(b.conv(h, "decoder.r1", { kernel: 1 }));
  u = b.relu(b.conv(g.node("Concat", [u, e1], { axis: 1 }), "decoder.u1"));
  u = up2(u);
  const m0 = pointMaps(n0, s0, sig0);
  const box0 = boxMap(n0, s0, m0.pos);
  u = g.node("Concat", [u, e0, m0.pos, m0.neg, box0, pooledDistance(e0, m0.pos)], { axis: 1 });
  const masks = b.conv(b.relu(b.conv(u, "decoder.u2")), "decoder.out"); // [P, K, n0, n0]

  const iou = g.node("Slice", [scores, g.int64([0]), g.int64([K]), g.int64([1])]);
  const objectScore = g.node("Slice", [scores, g.int64([K]), g.int64([K + 1]), g.int64([1])]);
  g.output("iou_scores", "float32", [1, "num_prompts", K], unsq(iou, [0]));
  g.output("pred_masks", "float32", [1, "num_prompts", K, n0, n0], unsq(masks, [0]));
  g.output("object_score_logits", "float32", [1, "num_prompts", 1], unsq(objectScore, [0]));
  return g.toModel({ docString: "region-vqa miniature SAM 2.1-style prompt encoder and mask decoder" });
}

/** Every parameter of the architecture with its PyTorch shape (the names `model.py` gives them). */
export function miniSamParameterShapes(arch: MiniSamArchitecture): Record<string, number[]> {
  const [c0, c1, c2] = arch.embedChannels;
  const d = arch.decoderChannels;
  const K = arch.numMasks;
  const shapes: Record<string, number[]> = {};
  const conv = (name: string, cin: number, cout: number, k = 3) => {
    shapes[`${name}.weight`] = [cout, cin, k, k];
    shapes[`${name}.bias`] = [cout];
  };
  conv("encoder.c0a", 3, c0);
  conv("encoder.c0b", c0, c0);
  conv("encoder.c1a", c0, c1);
  conv("encoder.c1b", c1, c1);
  conv("encoder.c2a", c1, c2);
  conv("encoder.c2b", c2, c2);
  conv("encoder.c2c", c2, c2);
  conv("decoder.t1", c2 + 4, d);
  conv("decoder.t2", d, d);
  conv("decoder.t3", d, d);
  shapes["decoder.head.weight"] = [K + 1, 2 * d];
  shapes["decoder.head.bias"] = [K + 1];
  conv("decoder.r1", d, c1, 1);
  conv("decoder.u1", 2 * c1, c1);
  conv("decoder.u2", c1 + c0 + 4, 8);
  conv("decoder.out", 8, K);
  return shapes;
}

/**
 * Seeded random weights (He-scaled uniform) of an architecture: graphs with the real I/O but no
 * training, for tests and benchmarks.
 */
export function randomMiniSamWeights(arch: MiniSamArchitecture, seed = 1): Weights & { keys(): string[] } {
  let state = seed >>> 0 || 1;
  const next = () => {
    // xorshift32: enough for weights nobody trains.
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return state / 4294967296;
  };
  const shapes = miniSamParameterShapes(arch);
  const data = new Map<string, Float32Array>();
  for (const [key, shape] of Object.entries(shapes)) {
    const count = shape.reduce((a, b) => a * b, 1);
    const fanIn = shape.length > 1 ? count / shape[0] : 1;
    const bound = key.endsWith(".bias") ? 0.01 : Math.sqrt(6 / fanIn);
    data.set(
      key,
      Float32Array.from({ length: count }, () => (next() * 2 - 1) * bound),
    );
  }
  return {
    keys: () => [...data.keys()],
    read: (key) => data.get(key)!,
    info: (key) => ({ dtype: "F32", shape: shapes[key] }),
  };
}
