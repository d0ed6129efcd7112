/**
 * The CLIP text encoder as an ONNX graph of standard opset-17 ops, computed in float32 (fp16 weights are
 * widened by Cast nodes). Forward pass and names: docs/reference.md section 6.
 *
 *   x = token_embedding[input_ids] + positional_embedding[:S]
 *   L pre-LN residual blocks (the visual tower's, see `ClipLayers`) with a causal mask
 *   h = ln_final(x)                                  -> last_hidden_state [batch, S, W]
 *   text_embeds = h[b, argmax(input_ids[b])] @ text_projection   [batch, D] (not normalised)
 *
 * `input_ids` is int64 [batch, S] with S <= contextLength: CLIP always feeds 77 positions, but thanks
 * to the causal mask the pooled row depends only on positions 0..EOT, so a caller may cut every row
 * after the batch's last EOT and get the same features. argmax takes the FIRST largest id, so the first
 * EOT (49407, the largest id) is pooled.
 */
import {
  float32ArrayToFloat16,
  onnx,
  type OnnxGraphBuilder,
  type WeightPrecision,
} from "../common/onnx/index.js";
import type { StateDict } from "../vision/checkpoint/index.js";
import { ClipLayers } from "../vision/convert/clip-layers.js";
import type { ClipTextConfig } from "./config.js";

export const INPUT_IDS_INPUT = "input_ids";
export const TEXT_EMBEDS_OUTPUT = "text_embeds";
export const LAST_HIDDEN_STATE_OUTPUT = "last_hidden_state";

export interface ClipTextGraphOptions {
  precision?: WeightPrecision;
}

export interface ClipTextGraphValues {
  /** float32 [batch, D]: pooled @ text_projection. */
  textEmbeds: string;
  /** float32 [batch, S, W]: ln_final of the last block's output (Hugging Face's last_hidden_state). */
  lastHiddenState: string;
  /** float32 [batch, S, W]: the embeddings (index 0) and each block's output (index i = after block i). */
  hiddenStates: string[];
}

/** The token table: gathered from fp16 storage and widened after the Gather in fp16 models. */
function tokenEmbedding(
  g: OnnxGraphBuilder,
  sd: StateDict,
  ids: string,
  config: ClipTextConfig,
  precision: WeightPrecision,
): string {
  const { vocabSize: V, width: W } = config;
  const table = sd.read("token_embedding.weight");
  if (precision === "fp32") {
    const t = g.initializer("token_embedding.weight", table, [V, W]);
    return g.node("Gather", [t, ids], { axis: 0 }, { name: "token_embedding" });
  }
  // A Cast of the whole table would be folded into a float32 copy at load; widening only the gathered
  // rows keeps the session's memory at the fp16 size.
  const half = float32ArrayToFloat16(table);
  for (let i = 0; i < half.length; i++) {
    if ((half[i] & 0x7fff) === 0x7c00 && Number.isFinite(table[i])) {
      throw new RangeError(
        `ONNX initializer token_embedding.weight: value ${table[i]} is outside the float16 range (use fp32)`,
      );
    }
  }
  const t = g.rawInitializer(
    "token_embedding.weight_fp16",
    "float16",
    [V, W],
    new Uint8Array(half.buffer, half.byteOffset, half.byteLength),
  );
  const rows = g.node("Gather", [t, ids], { axis: 0 }, { name: "token_embedding" });
  return g.node("Cast", [rows], { to: onnx.TensorProto.DataType.FLOAT }, { name: "token_embedding_cast" });
}

/**
 * Add the text encoder to `g` (declaring the `input_ids` input) and return its value names; the
 * caller declares the outputs it wants.
 */
export function appendClipTextNodes(
  g: OnnxGraphBuilder,
  sd: StateDict,
  config: ClipTextConfig,
  options: ClipTextGraphOptions = {},
): ClipTextGraphValues {
  const { width: W, heads: H, layers: L, contextLength: T, embedDim: D } = config;
  const precision = options.precision ?? "fp32";
  const layers = new ClipLayers(g, sd, precision);

  const ids = g.input(INPUT_IDS_INPUT, "int64", ["batch", "sequence"]);
  // S as a 1-D int64 [1], for slicing the position table and the mask to the input's length.
  const seq = g.node(
    "Slice",
    [g.node("Shape", [ids]), g.int64([1]), g.int64([2])],
    {},
    { name: "sequence_length" },
  );

  const tokens = tokenEmbedding(g, sd, ids, config, precision);
  const positionTable = layers.matrix("positional_embedding", sd.read("positional_embedding"), [T, W]);
  const positions = g.node(
    "Slice",
    [positionTable, g.int64([0]), seq, g.int64([0])],
    {},
    { name: "positions_slice" },
  );
  let x = g.node("Add", [tokens, positions], {}, { name: "add_positions" });
  const hiddenStates = [x];

  // Causal mask: -inf where the key position is after the query position (CLIP's build_attention_mask).
  const maskData = new Float32Array(T * T);
  for (let q = 0; q < T; q++) for (let k = q + 1; k < T; k++) maskData[q * T + k] = -Infinity;
  const maskTable = g.initializer("causal_mask", maskData, [T, T]);
  const mask = g.node(
    "Slice",
    [
      maskTable,
      g.int64([0, 0]),
      g.node("Concat", [seq, seq], { axis: 0 }, { name: "mask_size" }),
      g.int64([0, 1]),
    ],
    {},
    { name: "causal_mask_slice" },
  );

  for (let i = 0; i < L; i++) {
    x = layers.residualBlock(x, {
      prefix: `transformer.resblocks.${i}`,
      nodePrefix: `block${i}`,
      width: W,
      heads: H,
      attentionMask: mask,
    });
    hiddenStates.push(x);
  }
  const lastHiddenState = layers.layerNorm(x, "ln_final");

  // Pool the row at the first largest id of each sequence. Ids are below 2^24, so float32 holds them
  // exactly, and ArgMax over float32 runs on every execution provider.
  const idsFloat = g.node("Cast", [ids], { to: onnx.TensorProto.DataType.FLOAT }, { name: "ids_to_float" });
  const eot = g.node(
    "ArgMax",
    [idsFloat],
    { axis: 1, keepdims: 1, select_last_index: 0 },
    { name: "eot_index" },
  );
  const gatherIndex = g.node(
    "Expand",
    [g.node("Unsqueeze", [eot, g.int64([2])], {}, { name: "eot_index_unsqueeze" }), g.int64([1, 1, W])],
    {},
    { name: "eot_index_expand" },
  );
  const pooled = g.node("GatherElements", [lastHiddenState, gatherIndex], { axis: 1 }, { name: "pool_eot" });
  const projected = g.node(
    "MatMul",
    [pooled, layers.matrix("text_projection", sd.read("text_projection"), [W, D])],
    {},
    { name: "text_projection" },
  );
  const textEmbeds = g.node("Reshape", [projected, g.int64([0, D])], {}, { name: "text_embeds_flatten" });
  return { textEmbeds, lastHiddenState, hiddenStates };
}
