/**
 * Writes LLaMA-architecture GGUF files (llama.cpp arch "llama") from plain Float32Arrays, for small test
 * models and for the bundled model's trainer. Weights are given in PyTorch order: a Linear weight is
 * [out, in] row-major, which GGUF stores as ggml ne = [in, out]. Keys, tensor names and the RoPE
 * pair/half trap: docs/reference.md section 5.
 */
import { readGgufFileInfo } from "node-llama-cpp";
import { RegionVqaError } from "../common/errors.js";
import { gguf, writeGgufFile, type GgufMetadataEntry, type GgufTensorInput } from "../common/gguf/index.js";

/** A SentencePiece ("llama") vocabulary as GGUF stores it. */
export interface LlamaVocabulary {
  tokens: string[];
  scores: number[];
  /** llama.cpp token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte. */
  tokenTypes: number[];
  bosTokenId: number;
  eosTokenId: number;
  unknownTokenId: number;
  addBosToken: boolean;
  addEosToken: boolean;
}

export interface LlamaLayerWeights {
  attentionNorm: Float32Array; // [dim]
  query: Float32Array; // [heads * headDim, dim]
  key: Float32Array; // [kvHeads * headDim, dim]
  value: Float32Array; // [kvHeads * headDim, dim]
  attentionOutput: Float32Array; // [dim, heads * headDim]
  ffnNorm: Float32Array; // [dim]
  ffnGate: Float32Array; // [ffn, dim]
  ffnUp: Float32Array; // [ffn, dim]
  ffnDown: Float32Array; // [dim, ffn]
}

export interface LlamaWeights {
  tokenEmbedding: Float32Array; // [vocab, dim]
  layers: LlamaLayerWeights[];
  outputNorm: Float32Array; // [dim]
  /** LM head [vocab, dim]; omit to tie it to the token embedding. */
  output?: Float32Array;
}

export interface LlamaGgufConfig {
  name?: string;
  contextLength: number;
  embeddingLength: number;
  feedForwardLength: number;
  headCount: number;
  headCountKv?: number;
  rmsNormEps?: number;
  ropeFreqBase?: number;
  /**
   * How the weights' RoPE rotates: "pairs" = (x[2i], x[2i+1]) as llama.cpp does; "halves" =
   * (x[i], x[i + d/2]) as HF-style PyTorch code does. "halves" permutes the Q and K rows on writing
   * (what llama.cpp's converter does), otherwise such a model loads fine and answers nonsense.
   */
  ropeLayout: "pairs" | "halves";
  /** Storage type of the 2-D weights (norms stay F32). Default F32. */
  weightType?: "F32" | "F16";
}

/** Reads the vocabulary of a llama-SPM GGUF (e.g. test/fixtures/golden/ggml-vocab-llama-spm.gguf). */
export async function readLlamaVocabulary(ggufPath: string): Promise<LlamaVocabulary> {
  const info = await readGgufFileInfo(ggufPath, { readTensorInfo: false });
  const tokenizer = (info.metadata as { tokenizer?: { ggml?: Record<string, unknown> } }).tokenizer?.ggml;
  if (!tokenizer || tokenizer.model !== "llama") {
    throw new RegionVqaError("model_invalid", `${ggufPath} has no SentencePiece ("llama") vocabulary`);
  }
  const tokens = tokenizer.tokens as string[] | undefined;
  const scores = tokenizer.scores as number[] | undefined;
  const tokenTypes = tokenizer.token_type as number[] | undefined;
  if (
    !tokens ||
    !scores ||
    !tokenTypes ||
    scores.length !== tokens.length ||
    tokenTypes.length !== tokens.length
  ) {
    throw new RegionVqaError(
      "model_invalid",
      `${ggufPath}: tokens, scores and token_type are missing or differ in length`,
    );
  }
  return {
    tokens: [...tokens],
    scores: [...scores],
    tokenTypes: [...tokenTypes],
    bosTokenId: Number(tokenizer.bos_token_id ?? 1),
    eosTokenId: Number(tokenizer.eos_token_id ?? 2),
    unknownTokenId: Number(tokenizer.unknown_token_id ?? 0),
    addBosToken: Boolean(tokenizer.add_bos_token ?? true),
    addEosToken: Boolean(tokenizer.add_eos_token ?? false),
  };
}

/**
 * Reorders the rows of a Q or K weight [heads * headDim, in] from half-rotation to pair-rotation
 * order: within each head, new row 2i + j takes old row j * headDim/2 + i.
 */
export function permuteRowsForPairRope(
  weight: Float32Array,
  heads: number,
  inFeatures: number,
): Float32Array {
  const rows = weight.length / inFeatures;
  const headDim = rows / heads;
  if (!Number.isInteger(rows) || !Number.isInteger(headDim) || headDim % 2 !== 0) {
    throw new RegionVqaError(
      "model_invalid",
      `cannot permute a [${rows}, ${inFeatures}] weight over ${heads} heads`,
    );
  }
  const half = headDim / 2;
  const out = new Float32Array(weight.length);
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < half; i++) {
      for (let j = 0; j < 2; j++) {
        const from = (h * headDim + j * half + i) * inFeatures;
        const to = (h * headDim + 2 * i + j) * inFeatures;
        out.set(weight.subarray(from, from + inFeatures), to);
      }
    }
  }
  return out;
}

export async function writeLlamaGguf(
  path: string,
  weights: LlamaWeights,
  config: LlamaGgufConfig,
  vocab: LlamaVocabulary,
): Promise<void> {
  const dim = config.embeddingLength;
  const ffn = config.feedForwardLength;
  const heads = config.headCount;
  const kvHeads = config.headCountKv ?? heads;
  const vocabSize = vocab.tokens.length;
  if (dim % heads !== 0)
    throw new RegionVqaError("model_invalid", `embedding length ${dim} is not divisible by ${heads} heads`);
  const headDim = dim / heads;
  const kvDim = kvHeads * headDim;
  const weightType = config.weightType ?? "F32";

  const tensors: GgufTensorInput[] = [];
  const add = (name: string, data: Float32Array, shape: number[], type: "F32" | "F16" = weightType): void => {
    const expected = shape.reduce((a, b) => a * b, 1);
    if (data.length !== expected) {
      throw new RegionVqaError(
        "model_invalid",
        `${name}: ${data.length} values, expected [${shape.join(", ")}] = ${expected}`,
      );
    }
    tensors.push({ name, shape, type, data });
  };
  const permute = (w: Float32Array, n: number): Float32Array =>
    config.ropeLayout === "halves" ? permuteRowsForPairRope(w, n, dim) : w;

  add("token_embd.weight", weights.tokenEmbedding, [vocabSize, dim]);
  weights.layers.forEach((layer, i) => {
    const p = `blk.${i}.`;
    add(`${p}attn_norm.weight`, layer.attentionNorm, [dim], "F32");
    add(`${p}attn_q.weight`, permute(layer.query, heads), [dim, dim]);
    add(`${p}attn_k.weight`, permute(layer.key, kvHeads), [kvDim, dim]);
    add(`${p}attn_v.weight`, layer.value, [kvDim, dim]);
    add(`${p}attn_output.weight`, layer.attentionOutput, [dim, dim]);
    add(`${p}ffn_norm.weight`, layer.ffnNorm, [dim], "F32");
    add(`${p}ffn_gate.weight`, layer.ffnGate, [ffn, dim]);
    add(`${p}ffn_up.weight`, layer.ffnUp, [ffn, dim]);
    add(`${p}ffn_down.weight`, layer.ffnDown, [dim, ffn]);
  });
  add("output_norm.weight", weights.outputNorm, [dim], "F32");
  if (weights.output) add("output.weight", weights.output, [vocabSize, dim]);

  const metadata: GgufMetadataEntry[] = [
    gguf.str("general.architecture", "llama"),
    gguf.str("general.name", config.name ?? "llama"),
    gguf.u32("general.file_type", weightType === "F16" ? 1 : 0),
    gguf.u32("llama.context_length", config.contextLength),
    gguf.u32("llama.embedding_length", dim),
    gguf.u32("llama.block_count", weights.layers.length),
    gguf.u32("llama.feed_forward_length", ffn),
    gguf.u32("llama.attention.head_count", heads),
    gguf.u32("llama.attention.head_count_kv", kvHeads),
    gguf.u32("llama.rope.dimension_count", headDim),
    gguf.f32("llama.attention.layer_norm_rms_epsilon", config.rmsNormEps ?? 1e-5),
    gguf.f32("llama.rope.freq_base", config.ropeFreqBase ?? 10000),
    gguf.u32("llama.vocab_size", vocabSize),
    gguf.str("tokenizer.ggml.model", "llama"),
    gguf.arr.str("tokenizer.ggml.tokens", vocab.tokens),
    gguf.arr.f32("tokenizer.ggml.scores", vocab.scores),
    gguf.arr.i32("tokenizer.ggml.token_type", vocab.tokenTypes),
    gguf.u32("tokenizer.ggml.bos_token_id", vocab.bosTokenId),
    gguf.u32("tokenizer.ggml.eos_token_id", vocab.eosTokenId),
    gguf.u32("tokenizer.ggml.unknown_token_id", vocab.unknownTokenId),
    gguf.bool("tokenizer.ggml.add_bos_token", vocab.addBosToken),
    gguf.bool("tokenizer.ggml.add_eos_token", vocab.addEosToken),
  ];
  await writeGgufFile(path, { metadata, tensors });
}

/** Deterministic pseudo-random generator (mulberry32) for reproducible random test models. */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface RandomLlamaShape {
  vocabSize: number;
  embeddingLength: number;
  feedForwardLength: number;
  headCount: number;
  headCountKv?: number;
  blockCount: number;
  tied: boolean;
  seed?: number;
  /** Standard deviation-ish scale of the random weights. Default 0.5 / sqrt(fan-in)... per matrix. */
  scale?: number;
}

/** Random LLaMA weights (uniform, scaled by 1/sqrt(fan-in)) for tests and benchmarks. */
export function randomLlamaWeights(shape: RandomLlamaShape): LlamaWeights {
  const rand = seededRandom(shape.seed ?? 1);
  const dim = shape.embeddingLength;
  const ffn = shape.feedForwardLength;
  const kvDim = ((shape.headCountKv ?? shape.headCount) * dim) / shape.headCount;
  const scale = shape.scale ?? 1;
  const matrix = (rows: number, cols: number, gain = scale / Math.sqrt(cols)): Float32Array => {
    const m = new Float32Array(rows * cols);
    for (let i = 0; i < m.length; i++) m[i] = (rand() * 2 - 1) * gain * Math.sqrt(3);
    return m;
  };
  const ones = (n: number): Float32Array => new Float32Array(n).fill(1);
  return {
    tokenEmbedding: matrix(shape.vocabSize, dim, 1),
    layers: Array.from({ length: shape.blockCount }, () => ({
      attentionNorm: ones(dim),
      query: matrix(dim, dim),
      key: matrix(kvDim, dim),
      value: matrix(kvDim, dim),
      attentionOutput: matrix(dim, dim),
      ffnNorm: ones(dim),
      ffnGate: matrix(ffn, dim),
      ffnUp: matrix(ffn, dim),
      ffnDown: matrix(dim, ffn),
    })),
    outputNorm: ones(dim),
    output: shape.tied ? undefined : matrix(shape.vocabSize, dim),
  };
}
