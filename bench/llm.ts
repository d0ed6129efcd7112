/**
 * LLM stage benchmark: a moderately sized random LLaMA (written on demand to the temp dir, not
 * committed) on the real llama.cpp engine. Measures, for each thread count:
 *   - prefill of 576 image embedding rows through the companion addon vs the same number of tokens
 *     through node-llama-cpp's own token path,
 *   - decode tokens/s (embedding conversation vs plain token sequence),
 *   - time to first token of the first question and of a follow-up (which only evaluates its own turn).
 * With --busy, a second process spins on another core meanwhile (what ONNX Runtime does to us).
 *
 *   npm run bench:llm -- [--threads 1,2] [--busy] [--dim 1024] [--layers 4] [--gpu cuda]
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { getLlama, type Token } from "node-llama-cpp";
import {
  LlavaModel,
  LlavaPrompt,
  randomLlamaWeights,
  readLlamaVocabulary,
  seededRandom,
  writeLlamaGguf,
  type LlmGpu,
} from "../src/llm/index.js";

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const vocabPath = path.resolve(repoRoot, "test/fixtures/golden/ggml-vocab-llama-spm.gguf");

function arg(name: string, fallback: string): string {
  const at = process.argv.indexOf(`--${name}`);
  return at >= 0 && process.argv[at + 1] !== undefined ? process.argv[at + 1] : fallback;
}
const dim = Number(arg("dim", "1024"));
const layers = Number(arg("layers", "4"));
const threadCounts = arg("threads", "1,2").split(",").map(Number);
const busy = process.argv.includes("--busy");
const gpu = (arg("gpu", "false") === "false" ? false : arg("gpu", "false")) as LlmGpu;
const IMAGE_ROWS = 576;
const DECODE_TOKENS = 32;
const heads = dim / 64;
const ffn = Math.round((dim * 8) / 3 / 64) * 64;

const shape = {
  vocabSize: 32000,
  embeddingLength: dim,
  feedForwardLength: ffn,
  headCount: heads,
  blockCount: layers,
};
const modelPath = path.join(os.tmpdir(), `region-vqa-bench-llama-d${dim}-l${layers}-f16.gguf`);
const weights = randomLlamaWeights({ ...shape, tied: false, seed: 7 });
if (!existsSync(modelPath)) {
  mkdirSync(path.dirname(modelPath), { recursive: true });
  console.error(`writing ${modelPath}`);
  await writeLlamaGguf(
    modelPath,
    weights,
    {
      contextLength: 4096,
      embeddingLength: dim,
      feedForwardLength: ffn,
      headCount: heads,
      ropeLayout: "pairs",
      weightType: "F16",
    },
    await readLlamaVocabulary(vocabPath),
  );
}

// Image rows = token embedding rows of random tokens, so both paths see comparable inputs.
const rand = seededRandom(3);
const imageTokens = Array.from({ length: IMAGE_ROWS }, () => (300 + Math.floor(rand() * 30000)) as Token);
const imageRows = new Float32Array(IMAGE_ROWS * dim);
imageTokens.forEach((t, i) =>
  imageRows.set(weights.tokenEmbedding.subarray(t * dim, (t + 1) * dim), i * dim),
);

const seconds = (start: bigint): number => Number(process.hrtime.bigint() - start) / 1e9;
const fmt = (x: number, digits = 1): string => x.toFixed(digits);

let spinner: ChildProcess | undefined;
if (busy) spinner = spawn(process.execPath, ["-e", "for(;;){}"], { stdio: "ignore" });

const llama = await getLlama({ gpu, build: "never", logLevel: "error" as never });
const rows: string[][] = [];
try {
  for (const threads of threadCounts) {
    const llm = await LlavaModel.load({
      modelPath,
      llama,
      gpu,
      threads,
      contextSize: 2048,
      batchSize: 512,
      maxConversations: 2,
    });
    try {
      const prompt = new LlavaPrompt(llm.model);
      const question = "What is in the highlighted region?";

      // Embedding path: system prompt + 576 rows, then the question, then a follow-up.
      let t = process.hrtime.bigint();
      const conversation = await llm.openConversation({ embeddings: imageRows });
      const openSeconds = seconds(t);
      t = process.hrtime.bigint();
      let firstTokenSeconds = 0;
      const stream = conversation.ask(question, { maxTokens: DECODE_TOKENS });
      for await (const _piece of stream) {
        if (firstTokenSeconds === 0) firstTokenSeconds = seconds(t);
      }
      const first = await stream.result;
      const answerSeconds = seconds(t);
      t = process.hrtime.bigint();
      let followUpFirst = 0;
      const followUp = conversation.ask("Describe it in more detail.", { maxTokens: 4 });
      for await (const _piece of followUp) {
        if (followUpFirst === 0) followUpFirst = seconds(t);
      }
      const followUpResult = await followUp.result;
      await conversation.dispose();

      // node-llama-cpp's own token path on the same model: the same prompt with the image tokens.
      const sequence = llm.context.getSequence();
      const tokens = [...prompt.beforeImage(), ...imageTokens];
      t = process.hrtime.bigint();
      await sequence.evaluateWithoutGeneratingNewTokens(tokens);
      const tokenPrefillSeconds = seconds(t);
      t = process.hrtime.bigint();
      let generated = 0;
      let tokenFirst = 0;
      for await (const _token of sequence.evaluate(prompt.afterImage(question), { temperature: 0 })) {
        if (generated === 0) tokenFirst = seconds(t);
        if (++generated >= first.completionTokens) break;
      }
      const tokenDecodeSeconds = seconds(t) - tokenFirst;
      await sequence.dispose();

      const prefillRows = prompt.beforeImage().length + IMAGE_ROWS;
      rows.push([
        `${threads}`,
        `${fmt(prefillRows / openSeconds)} (${fmt(openSeconds, 2)} s)`,
        `${fmt(tokens.length / tokenPrefillSeconds)} (${fmt(tokenPrefillSeconds, 2)} s)`,
        `${fmt((first.completionTokens - 1) / Math.max(1e-9, answerSeconds - firstTokenSeconds))}`,
        `${fmt((generated - 1) / Math.max(1e-9, tokenDecodeSeconds))}`,
        `${fmt(firstTokenSeconds * 1000, 0)} ms`,
        `${fmt(followUpFirst * 1000, 0)} ms (${followUpResult.evaluatedPromptTokens} tok)`,
      ]);
    } finally {
      await llm.dispose();
    }
  }
} finally {
  spinner?.kill();
  await llama.dispose();
}

const header = [
  "threads",
  "prefill emb/s (576 rows + 35 tok)",
  "prefill tok/s, token path",
  "decode tok/s, conv",
  "decode tok/s, token path",
  "first answer TTFT",
  "follow-up TTFT",
];
console.log(
  `model: random LLaMA dim ${dim}, ${layers} layers, ffn ${ffn}, F16, vocab 32000; gpu=${String(gpu)}; ` +
    `${busy ? "other core busy" : "other core idle (as far as this process knows)"}; cpus ${os.cpus().length}`,
);
console.log(`| ${header.join(" | ")} |`);
console.log(`|${header.map(() => "---").join("|")}|`);
for (const row of rows) console.log(`| ${row.join(" | ")} |`);
