/**
 * Tokenises every text the shapes world can produce with the real LLaMA SentencePiece vocabulary,
 * through node-llama-cpp (the tokenizer the pipeline itself uses), so training sees exactly the ids
 * the pipeline will feed. Usage: npx tsx tools/shapes/tokenize.ts <texts.json> <tokens.json>
 * texts.json: {"questions": [...], "answers": [...]} (from `python3 tools/shapes/train.py texts`).
 */
import { readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { getLlama } from "node-llama-cpp";

const SYSTEM =
  "A chat between a curious user and an artificial intelligence assistant. " +
  "The assistant gives helpful, detailed, and polite answers to the user's questions.";

async function main(): Promise<void> {
  const [textsPath, outPath] = process.argv.slice(2);
  if (!textsPath || !outPath) throw new Error("usage: tokenize.ts <texts.json> <tokens.json>");
  const texts = JSON.parse(await readFile(textsPath, "utf8")) as { questions: string[]; answers: string[] };
  const vocab = path.resolve(import.meta.dirname, "../../test/fixtures/golden/ggml-vocab-llama-spm.gguf");
  const llama = await getLlama({ gpu: false, build: "never" });
  const model = await llama.loadModel({ modelPath: vocab, vocabOnly: true });
  const tok = (text: string): number[] => Array.from(model.tokenize(text, false));
  // The LLaVA-1.5 prompt: chunk before the image gets BOS; the chunk after is tokenised on its own.
  const prefix = [model.tokens.bos ?? 1, ...tok(`${SYSTEM} USER: `)];
  const questions: Record<string, number[]> = {};
  for (const q of texts.questions) questions[q] = tok(`\n${q} ASSISTANT:`);
  // A later turn (after the previous answer's </s>), tokenised as src/llm/prompt.ts nextTurn does.
  const turns: Record<string, number[]> = {};
  for (const q of texts.questions) turns[q] = tok(` USER: ${q} ASSISTANT:`);
  // Answers follow "ASSISTANT:" after a space (SentencePiece's dummy prefix gives that space).
  const answers: Record<string, number[]> = {};
  for (const a of texts.answers) answers[a] = tok(a);
  await writeFile(outPath, JSON.stringify({ prefix, questions, turns, answers, eos: model.tokens.eos ?? 2 }));
  await model.dispose();
  await llama.dispose();
  console.error(
    `tokenize: prefix ${prefix.length} tokens, ${texts.questions.length} questions, ${texts.answers.length} answers`,
  );
}

await main();
