/**
 * The LLM stage on the real llama.cpp engine (node-llama-cpp, CPU, 1 thread) with small random LLaMA
 * models written by writeLlamaGguf into a temporary directory, and the golden LLaMA SPM vocabulary.
 */
import { existsSync, mkdirSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { getLlama, type Llama, type LlamaModel, type Token } from "node-llama-cpp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { isRegionVqaError } from "../src/common/errors.js";
import {
  LlavaModel,
  LlavaPrompt,
  checkNativeLayout,
  permuteRowsForPairRope,
  randomLlamaWeights,
  readLlamaVocabulary,
  seededRandom,
  writeLlamaGguf,
  type LlamaWeights,
  type LlavaConversation,
} from "../src/llm/index.js";

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const vocabPath = path.resolve(repoRoot, "test/fixtures/golden/ggml-vocab-llama-spm.gguf");
const cacheDir = path.join(os.tmpdir(), "region-vqa-llm-test-v1");
const QUESTION = "What is in the highlighted region?";
const DIM = 64;

// docs/reference.md section 3.
const REFERENCE_BEFORE = [
  1, 319, 13563, 1546, 263, 12758, 1404, 322, 385, 23116, 21082, 20255, 29889, 450, 20255, 4076, 8444, 29892,
  13173, 29892, 322, 1248, 568, 6089, 304, 278, 1404, 29915, 29879, 5155, 29889, 3148, 1001, 29901, 29871,
];
const REFERENCE_AFTER = [
  29871, 13, 5618, 338, 297, 278, 12141, 287, 5120, 29973, 319, 1799, 9047, 13566, 29901,
];

interface TestModel {
  path: string;
  weights: LlamaWeights;
}

async function makeModel(name: string, tied: boolean): Promise<TestModel> {
  const weights = randomLlamaWeights({
    vocabSize: 32000,
    embeddingLength: DIM,
    feedForwardLength: 128,
    headCount: 4,
    headCountKv: 2,
    blockCount: 3,
    tied,
    seed: tied ? 11 : 12,
  });
  const file = path.join(cacheDir, `${name}.gguf`);
  if (!existsSync(file)) {
    mkdirSync(cacheDir, { recursive: true });
    const vocab = await readLlamaVocabulary(vocabPath);
    await writeLlamaGguf(
      file,
      weights,
      {
        name,
        contextLength: 2048,
        embeddingLength: DIM,
        feedForwardLength: 128,
        headCount: 4,
        headCountKv: 2,
        ropeLayout: "pairs",
      },
      vocab,
    );
  }
  return { path: file, weights };
}

/** Rows of the token embedding matrix: feeding them must equal feeding the tokens. */
function embeddingRows(weights: LlamaWeights, tokens: Token[]): Float32Array {
  const rows = new Float32Array(tokens.length * DIM);
  tokens.forEach((t, i) => rows.set(weights.tokenEmbedding.subarray(t * DIM, (t + 1) * DIM), i * DIM));
  return rows;
}

async function collect(stream: AsyncIterable<string>): Promise<string[]> {
  const pieces: string[] = [];
  for await (const piece of stream) pieces.push(piece);
  return pieces;
}

let llama: Llama;

beforeAll(async () => {
  llama = await getLlama({ gpu: false, build: "never", logLevel: "error" as never });
});

afterAll(async () => {
  await llama?.dispose();
});

describe("LLaVA prompt", () => {
  let vocabModel: LlamaModel;
  beforeAll(async () => {
    vocabModel = await llama.loadModel({ modelPath: vocabPath, vocabOnly: true });
  });
  afterAll(async () => {
    await vocabModel?.dispose();
  });

  it("reproduces LLaVA-1.5's token ids around the image", () => {
    const prompt = new LlavaPrompt(vocabModel);
    expect(prompt.beforeImage()).toEqual(REFERENCE_BEFORE);
    expect(prompt.afterImage(QUESTION)).toEqual(REFERENCE_AFTER);
    expect(prompt.answerEnd()).toEqual([2]);
    // Later turns: ` USER: {q} ASSISTANT:`, tokenised on their own.
    expect(prompt.nextTurn("Why?")).toEqual(vocabModel.tokenize(" USER: Why? ASSISTANT:", false));
  });

  it("keeps user text literal and accepts a custom template", () => {
    const prompt = new LlavaPrompt(vocabModel, { systemPrompt: "Be brief." });
    expect(vocabModel.detokenize(prompt.beforeImage())).toContain("Be brief. USER:");
    // "</s>" typed by a user is text, not the end-of-sequence token.
    expect(prompt.afterImage("a </s> b")).not.toContain(2);
    // "{system}" inside a question is not substituted.
    expect(vocabModel.detokenize(prompt.afterImage("{system}"))).toContain("{system}");
    expect(() => new LlavaPrompt(vocabModel, { firstTurn: "no image {question}" })).toThrow(/<image>/);
  });
});

describe("writeLlamaGguf", () => {
  it("permutes Q/K rows from half rotation to pair rotation like llama.cpp's converter", () => {
    // One head of dim 4, in_features 1: rows [r0, r1, r2, r3] -> [r0, r2, r1, r3].
    expect([...permuteRowsForPairRope(Float32Array.from([0, 1, 2, 3]), 1, 1)]).toEqual([0, 2, 1, 3]);
    // Two heads of dim 4, in_features 2.
    const w = Float32Array.from({ length: 16 }, (_, i) => i);
    expect([...permuteRowsForPairRope(w, 2, 2)]).toEqual([
      0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15,
    ]);
  });
});

for (const tied of [false, true]) {
  describe(`embeddings into a random LLaMA (${tied ? "tied" : "untied"} output)`, () => {
    let testModel: TestModel;
    let llm: LlavaModel;

    beforeAll(async () => {
      testModel = await makeModel(tied ? "tiny-tied" : "tiny-untied", tied);
      // batchSize 16 < the 40 image rows below: the addon must split them into chunks.
      llm = await LlavaModel.load({
        modelPath: testModel.path,
        llama,
        threads: 1,
        contextSize: 512,
        batchSize: 16,
        maxConversations: 2,
      });
    });
    afterAll(async () => {
      await llm?.dispose();
    });

    /** 40 "image" rows made of real token embeddings. */
    function fakeImage(seed: number): { tokens: Token[]; rows: Float32Array } {
      const rand = seededRandom(seed);
      const tokens = Array.from({ length: 40 }, () => (300 + Math.floor(rand() * 30000)) as Token);
      return { tokens, rows: embeddingRows(testModel.weights, tokens) };
    }

    /** Greedy continuation through node-llama-cpp's own token path. */
    async function greedyTokens(tokens: Token[], count: number): Promise<Token[]> {
      const sequence = llm.context.getSequence();
      try {
        const out: Token[] = [];
        if (count === 0) return out;
        for await (const token of sequence.evaluate(tokens, { temperature: 0 })) {
          out.push(token);
          if (out.length >= count) break;
        }
        return out;
      } finally {
        await sequence.dispose();
      }
    }

    it("embedding rows give the same greedy answer as their tokens", async () => {
      const image = fakeImage(1);
      const conversation = await llm.openConversation({ embeddings: image.rows });
      expect(conversation.tokenCount).toBe(REFERENCE_BEFORE.length + 40);
      const result = await conversation.ask(QUESTION, { maxTokens: 12 }).result;
      await conversation.dispose();
      const prompt = new LlavaPrompt(llm.model);
      const expected = await greedyTokens(
        [...prompt.beforeImage(), ...image.tokens, ...prompt.afterImage(QUESTION)],
        12,
      );
      expect(result.tokens.length).toBeGreaterThan(0);
      expect(result.tokens).toEqual(expected.slice(0, result.tokens.length));
      expect(result.promptTokens).toBe(REFERENCE_BEFORE.length + 40 + REFERENCE_AFTER.length);
    });

    it("a follow-up evaluates only its own tokens and equals a fresh conversation given the history", async () => {
      const image = fakeImage(2);
      const conversation = await llm.openConversation({ embeddings: image.rows });
      const first = await conversation.ask(QUESTION, { maxTokens: 6 }).result;
      const cachedBefore = conversation.tokenCount;
      const second = await conversation.ask("And what colour is it?", { maxTokens: 8 }).result;
      const prompt = new LlavaPrompt(llm.model);
      const ownTokens = prompt.answerEnd().length + prompt.nextTurn("And what colour is it?").length;
      // The image and the first turn stay cached: only the new turn (plus any retokenised tail of the
      // first answer) is evaluated.
      expect(second.evaluatedPromptTokens).toBeGreaterThanOrEqual(ownTokens);
      expect(second.evaluatedPromptTokens).toBeLessThanOrEqual(ownTokens + prompt.answer(first.text).length);
      expect(second.promptTokens).toBeLessThanOrEqual(cachedBefore + second.evaluatedPromptTokens);
      expect(second.promptTokens).toBeGreaterThan(40 + second.evaluatedPromptTokens);
      await conversation.dispose();

      const replayed = await llm.openConversation({
        embeddings: image.rows,
        history: [{ question: QUESTION, answer: first.text }],
      });
      const fresh = await replayed.ask("And what colour is it?", { maxTokens: 8 }).result;
      await replayed.dispose();
      expect(fresh.promptTokens).toBe(second.promptTokens);
      expect(fresh.tokens).toEqual(second.tokens);
      expect(fresh.text).toBe(second.text);
      expect(replayed.turns).toHaveLength(2);
    });

    it("streams pieces that add up to the text, stops at maxTokens and at stop strings", async () => {
      const image = fakeImage(3);
      const a = await llm.openConversation({ embeddings: image.rows });
      const stream = a.ask(QUESTION, { maxTokens: 10 });
      const pieces = await collect(stream);
      const full = await stream.result;
      await a.dispose();
      expect(full.finishReason).toBe("length");
      expect(full.completionTokens).toBe(10);
      expect(pieces.join("")).toBe(full.text);
      expect(pieces.every((p) => !p.includes("\uFFFD"))).toBe(true);

      // Stop at a piece of text the model is known to produce (greedy, so it will again).
      const stop = full.text.slice(Math.floor(full.text.length / 2), Math.floor(full.text.length / 2) + 2);
      expect(stop.length).toBe(2);
      const b = await llm.openConversation({ embeddings: image.rows });
      const stopped = b.ask(QUESTION, { maxTokens: 10, stop: [stop] });
      const stoppedPieces = await collect(stopped);
      const stoppedResult = await stopped.result;
      await b.dispose();
      expect(stoppedResult.finishReason).toBe("stop");
      expect(stoppedResult.text).toBe(full.text.slice(0, full.text.indexOf(stop)));
      expect(stoppedPieces.join("")).toBe(stoppedResult.text);
    });

    it("stops when the AbortSignal fires", async () => {
      const image = fakeImage(4);
      const conversation = await llm.openConversation({ embeddings: image.rows });
      const controller = new AbortController();
      const stream = conversation.ask(QUESTION, { maxTokens: 200, signal: controller.signal });
      let received = 0;
      for await (const piece of stream) {
        expect(piece.length).toBeGreaterThan(0);
        received++;
        if (received === 2) controller.abort();
      }
      const result = await stream.result;
      expect(result.finishReason).toBe("abort");
      expect(result.completionTokens).toBeLessThan(10);

      const already = AbortSignal.abort();
      const none = await conversation.ask(QUESTION, { signal: already }).result;
      expect(none).toMatchObject({ finishReason: "abort", completionTokens: 0, text: "" });
      await conversation.dispose();
    });

    it("runs two conversations at once, each as if alone; a third waits for a free slot", async () => {
      const imageA = fakeImage(5);
      const imageB = fakeImage(6);
      const [a, b] = await Promise.all([
        llm.openConversation({ embeddings: imageA.rows }),
        llm.openConversation({ embeddings: imageB.rows }),
      ]);
      expect(llm.activeConversations).toBe(2);
      const waiting = new AbortController();
      const third = llm.openConversation({ embeddings: imageA.rows, signal: waiting.signal });
      waiting.abort();
      await expect(third).rejects.toMatchObject({ code: "aborted" });

      const [ra, rb] = await Promise.all([
        a.ask(QUESTION, { maxTokens: 8 }).result,
        b.ask(QUESTION, { maxTokens: 8 }).result,
      ]);
      const queued = llm.openConversation({ embeddings: imageB.rows });
      await a.dispose();
      const c: LlavaConversation = await queued; // gets a's slot, cleared
      const rc = await c.ask(QUESTION, { maxTokens: 8 }).result;
      await Promise.all([b.dispose(), c.dispose()]);

      const alone = await llm.openConversation({ embeddings: imageA.rows });
      const ra1 = await alone.ask(QUESTION, { maxTokens: 8 }).result;
      await alone.dispose();
      expect(ra.tokens).toEqual(ra1.tokens);
      expect(rc.tokens).toEqual(rb.tokens);
    });

    it("refuses bad input with typed errors", async () => {
      await expect(llm.openConversation({ embeddings: new Float32Array(DIM * 3 + 1) })).rejects.toMatchObject(
        {
          code: "model_mismatch",
        },
      );
      await expect(
        llm.openConversation({ embeddings: new Float32Array(DIM * 600) }), // more rows than the context holds
      ).rejects.toMatchObject({ code: "context_full" });
      const conversation = await llm.openConversation({ embeddings: fakeImage(7).rows });
      await expect(conversation.ask("   ").result).rejects.toMatchObject({ code: "invalid_request" });
      await expect(conversation.ask(QUESTION, { temperature: -1 }).result).rejects.toMatchObject({
        code: "invalid_request",
      });
      await conversation.dispose();
      await expect(conversation.ask(QUESTION).result).rejects.toMatchObject({
        code: "conversation_not_found",
      });
      expect(llm.activeConversations).toBe(0);
    });
  });
}

describe("native layout check", () => {
  it("refuses objects that are not node-llama-cpp's context and model", async () => {
    const { path: modelPath } = await makeModel("tiny-untied", false);
    const model = await llama.loadModel({ modelPath });
    const context = await model.createContext({ contextSize: 256, batchSize: 32, sequences: 1, threads: 1 });
    try {
      const ctxHandle = (context as unknown as { _ctx: object })._ctx;
      const modelHandle = (model as unknown as { _model: object })._model;
      const contextSize = (ctxHandle as { getContextSize(): number }).getContextSize();
      const good = checkNativeLayout(ctxHandle, modelHandle, { contextSize, batchSize: 32, sequences: 1 });
      expect(good).toMatchObject({ batchSize: 32, sequences: 1, embeddingSize: DIM, vocabularySize: 32000 });

      const refusals: Array<[object, object, { contextSize: number; batchSize: number; sequences: number }]> =
        [
          [{}, modelHandle, { contextSize, batchSize: 32, sequences: 1 }], // a plain object
          [modelHandle, ctxHandle, { contextSize, batchSize: 32, sequences: 1 }], // swapped
          [ctxHandle, modelHandle, { contextSize, batchSize: 64, sequences: 1 }], // wrong batch
          [ctxHandle, modelHandle, { contextSize: contextSize + 1, batchSize: 32, sequences: 1 }], // wrong n_ctx
        ];
      for (const [c, m, expected] of refusals) {
        let caught: unknown;
        try {
          checkNativeLayout(c, m, expected);
        } catch (err) {
          caught = err;
        }
        expect(isRegionVqaError(caught) && caught.code).toBe("native_incompatible");
      }
    } finally {
      await context.dispose();
      await model.dispose();
    }
  });
});
