/**
 * Child-process script for llm-backends.test.ts: answers one question about the example scene with the
 * bundled model on the llama.cpp build named by argv[2] ("false", "vulkan", "auto") and prints JSON.
 * A process of its own: node-llama-cpp cannot unload a build, and the embeddings addon (rightly) refuses
 * to work while two builds are loaded.
 */
import { readFileSync } from "node:fs";
import path from "node:path";
import type { LlmGpu } from "../../src/llm/index.js";
import { resolveModelOptions } from "../../src/models/index.js";
import { createPipeline } from "../../src/pipeline/index.js";
import { repoRoot } from "./tiny-models.js";

const gpu = (process.argv[2] === "false" ? false : process.argv[2]) as LlmGpu;
const models = await resolveModelOptions({ gpu, device: "cpu", visionThreads: 1, llmThreads: 1 });
const pipeline = await createPipeline({ ...models, maxConversations: 1 });
try {
  const image = readFileSync(path.join(repoRoot, "examples/shapes.png"));
  const conversation = await pipeline.openConversation(image, { kind: "box", box: [128, 15, 210, 97] });
  const result = await conversation.ask("What is in the highlighted region?", { maxTokens: 16 }).result;
  const { libraryPath } = (pipeline as unknown as { llm: { native: { libraryPath: string } } }).llm.native;
  process.stdout.write(
    `${JSON.stringify({ device: pipeline.models.devices.llm, libraryPath, answer: result.text })}\n`,
  );
} finally {
  await pipeline.dispose();
}
