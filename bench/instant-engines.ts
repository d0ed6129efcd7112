/**
 * BENCHMARK-ONLY instant engines for bench/imaging.ts's "server ceiling": a vision encoder and a
 * language model that cost (almost) nothing but have the real shapes (Alpha-CLIP ViT-L/14@336 fused
 * with LLaVA-1.5's projector: 576 rows of 4096 per region, a 768-wide image embedding; a 4096-wide
 * LLM with 4 slots), plugged into the real pipeline (`LocalRegionVqaPipeline.fromEngines`). With
 * them, what a request costs is what the server itself costs: HTTP, JSON, decoding, hashing, masks,
 * preprocessing, caches. Never used by tests in place of the real models.
 */
import { uninitializedFloats } from "../src/common/imaging/kernels.js";
import type { AnswerResult, AnswerStream, Conversation, GenerationOptions, Turn } from "../src/llm/types.js";
import type { ConversationEngine, RegionEncoder } from "../src/pipeline/ports.js";
import type { EncoderInput, EncoderOutput } from "../src/vision/index.js";

const GRID = 24;
const ROWS = GRID * GRID;
const N_EMBD = 4096;
const EMBED = 768;

export function instantEncoder(): RegionEncoder & { runs: number } {
  const encoder = {
    runs: 0,
    imageSize: 336,
    provider: "cpu" as const,
    device: "instant (benchmark stand-in)",
    manifest: { kind: "alpha-clip-llava-fused" } as RegionEncoder["manifest"],
    config: {
      width: 1024,
      layers: 24,
      heads: 16,
      patchSize: 14,
      imageSize: 336,
      gridSize: GRID,
      outputDim: EMBED,
      projectorOutWidth: N_EMBD,
    } as RegionEncoder["config"],
    async encode(input: EncoderInput): Promise<EncoderOutput> {
      encoder.runs++;
      const n = input.alpha.shape[0];
      // Unzeroed, like the real encoder's outputs, which arrive from its worker (a transfer, not an
      // allocation on the event loop).
      return {
        projected: { data: uninitializedFloats(n * ROWS * N_EMBD), shape: [n, ROWS, N_EMBD] },
        imageEmbed: { data: uninitializedFloats(n * EMBED), shape: [n, EMBED] },
      };
    },
    async dispose(): Promise<void> {},
  };
  return encoder;
}

const ANSWER = ["It", " is", " a", " red", " circle", "."];

/** A language model that answers every question with the same six pieces at once. */
export function instantLlm(maxConversations = 4): ConversationEngine {
  let active = 0;
  return {
    device: "instant (benchmark stand-in)",
    embeddingSize: N_EMBD,
    maxConversations,
    get activeConversations() {
      return active;
    },
    async openConversation(options): Promise<Conversation> {
      if (active >= maxConversations) throw new Error("instant LLM: no free slot (the registry waits first)");
      active++;
      const turns: Turn[] = [...(options.history ?? [])];
      let open = true;
      const promptTokens = (options.embeddingCount ?? 0) + 40;
      return {
        id: options.id ?? `instant-${Math.random().toString(36).slice(2)}`,
        turns,
        ask(question: string, generation: GenerationOptions = {}): AnswerStream {
          const pieces = ANSWER.slice(0, generation.maxTokens ?? ANSWER.length);
          const result: AnswerResult = {
            text: pieces.join(""),
            promptTokens,
            completionTokens: pieces.length,
            finishReason: "stop",
          };
          turns.push({ question, answer: result.text });
          return {
            result: Promise.resolve(result),
            async *[Symbol.asyncIterator]() {
              yield* pieces;
            },
          };
        },
        async dispose() {
          if (open) active--;
          open = false;
        },
      };
    },
    async dispose(): Promise<void> {},
  };
}
