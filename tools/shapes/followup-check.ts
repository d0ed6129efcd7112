/**
 * Follow-up turns through the full pipeline: per scene one conversation about one object (mask
 * region), a first question and then a second question of another type in the same conversation; the
 * second answer is scored with checkAnswer. Prints the accuracy of second answers per type (stdout).
 * Usage: npx tsx tools/shapes/followup-check.ts [modelDir=models/shapes] [scenes=100] [seed=4000]
 */
import path from "node:path";
import { resolveModelOptions } from "../../src/models/index.js";
import { createPipeline } from "../../src/pipeline/index.js";
import {
  QUESTION_TYPES,
  checkAnswer,
  encodePng,
  generateScene,
  makeQuestion,
  renderScene,
  sceneRng,
  truthFor,
  type QuestionType,
} from "../../src/shapes/index.js";

const repoRoot = path.resolve(import.meta.dirname, "../..");
const OBJECT_TYPES = QUESTION_TYPES.filter((t) => t !== "count");

async function main(): Promise<void> {
  const [modelDir = path.join(repoRoot, "models/shapes"), scenesArg = "100", seedArg = "4000"] =
    process.argv.slice(2);
  const scenes = Number(scenesArg);
  const seed = Number(seedArg);
  const models = await resolveModelOptions({
    preset: path.resolve(modelDir),
    visionThreads: 1,
    llmThreads: 1,
    device: "cpu",
  });
  const pipeline = await createPipeline({ ...models, maxConversations: 2 });
  const tally = new Map<QuestionType, { correct: number; total: number }>();
  try {
    for (let i = 0; i < scenes; i++) {
      const scene = generateScene(seed, i);
      if (scene.objects.length === 0) continue;
      const { image, masks } = renderScene(scene);
      const rng = sceneRng(seed ^ 0x0f0110f0, i);
      const k = rng.randInt(0, scene.objects.length - 1);
      const obj = scene.objects[k];
      const first = OBJECT_TYPES[rng.randInt(0, OBJECT_TYPES.length - 1)];
      const others = OBJECT_TYPES.filter((t) => t !== first);
      const second = others[rng.randInt(0, others.length - 1)];
      const q1 = makeQuestion(rng, first, obj);
      const q2 = makeQuestion(rng, second, obj);
      const conversation = await pipeline.openConversation(await encodePng(image), {
        kind: "mask",
        mask: masks[k],
      });
      try {
        await conversation.ask(q1.text, { temperature: 0, maxTokens: 24 }).result;
        const answer = (
          await conversation.ask(q2.text, { temperature: 0, maxTokens: 24 }).result
        ).text.trim();
        const ok = checkAnswer(second, answer, truthFor(scene, obj, q2.asked));
        const t = tally.get(second) ?? { correct: 0, total: 0 };
        t.total++;
        if (ok) t.correct++;
        tally.set(second, t);
        if (i < 5) process.stderr.write(`${q1.text} / ${q2.text} -> ${answer} (${ok ? "ok" : "WRONG"})\n`);
      } finally {
        await conversation.dispose();
      }
    }
  } finally {
    await pipeline.dispose();
  }
  let right = 0;
  let total = 0;
  for (const [type, t] of tally) {
    right += t.correct;
    total += t.total;
    console.log(`${type.padEnd(10)} ${((100 * t.correct) / t.total).toFixed(1)}%  (${t.correct}/${t.total})`);
  }
  console.log(`second turns ${((100 * right) / total).toFixed(1)}%  (${right}/${total})`);
}

await main();
