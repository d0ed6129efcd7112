/**
 * A scripted `RegionVqaPipeline` for testing the API's own logic with `app.inject()`, as Fastify's
 * testing guide does: validation, error mapping, the JSON and event-stream formats, conversation ids.
 * This is a stand-in on purpose, not because the real engines cannot run here: they do, in the
 * loopback suites (api.test.ts, openai.test.ts, robustness, faults, load, UI), which check what needs
 * them. Here no model runs, so a test can see exactly what the API handed to the pipeline.
 *
 * Its answers are deterministic and say what it received: "<region> | <question> | turn <n>", where
 * <region> is "whole" or "mask <area>px x<x0>-<x1> y<y0>-<y1>" (from the checked mask the API made),
 * streamed one word per piece, each piece one "token".
 */
import { RegionVqaError } from "../../src/common/errors.js";
import type {
  AnswerResult,
  AnswerStream,
  Conversation,
  GenerationOptions,
  ModelsInfo,
  OpenConversationOptions,
  RegionVqaPipeline,
  Turn,
} from "../../src/pipeline/types.js";
import type { Region } from "../../src/vision/types.js";

/** One call the API made, with what it passed. */
export type PipelineCall =
  | { kind: "open"; region: string; options: OpenConversationOptions; image: Uint8Array }
  | { kind: "ask"; conversation: string; question: string; options: GenerationOptions }
  | { kind: "caption"; regions: string[]; options: GenerationOptions & { detail?: string } };

export function describeRegion(region: Region): string {
  if (region.kind === "whole") return "whole";
  if (region.kind !== "mask") return region.kind;
  const { width, height, data } = region.mask;
  let area = 0;
  let [x0, y0, x1, y1] = [width, height, -1, -1];
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (!data[y * width + x]) continue;
      area++;
      x0 = Math.min(x0, x);
      y0 = Math.min(y0, y);
      x1 = Math.max(x1, x);
      y1 = Math.max(y1, y);
    }
  }
  return `mask ${area}px x${x0}-${x1} y${y0}-${y1}`;
}

/** Streams `text` word by word like the real answer stream, honouring maxTokens and the signal. */
function scriptedAnswer(
  text: string,
  promptTokens: number,
  options: GenerationOptions,
  failure: { afterPieces: number; error: RegionVqaError } | undefined,
): AnswerStream {
  const words = text.split(/(?= )/);
  let resolveResult!: (r: AnswerResult) => void;
  let rejectResult!: (e: unknown) => void;
  const result = new Promise<AnswerResult>((resolve, reject) => {
    resolveResult = resolve;
    rejectResult = reject;
  });
  result.catch(() => undefined);
  async function* pieces(): AsyncGenerator<string> {
    const limit = options.maxTokens ?? Infinity;
    const sent: string[] = [];
    try {
      for (const word of words) {
        if (failure && sent.length === failure.afterPieces) throw failure.error;
        if (options.signal?.aborted) {
          resolveResult({
            text: sent.join(""),
            promptTokens,
            completionTokens: sent.length,
            finishReason: "abort",
          });
          return;
        }
        if (sent.length >= limit) break;
        await new Promise((r) => setImmediate(r));
        sent.push(word);
        yield word;
      }
    } catch (err) {
      rejectResult(err);
      throw err;
    }
    const finishReason = sent.length < words.length ? "length" : "stop";
    resolveResult({ text: sent.join(""), promptTokens, completionTokens: sent.length, finishReason });
  }
  const iterable = pieces();
  return { [Symbol.asyncIterator]: () => iterable, result };
}

export class ScriptedPipeline implements RegionVqaPipeline {
  readonly models: ModelsInfo = {
    id: "scripted",
    vision: "(none)",
    projector: "(none)",
    llm: "(none)",
    devices: { vision: "scripted", llm: "scripted" },
  };
  readonly calls: PipelineCall[] = [];
  private readonly live = new Map<string, Conversation>();
  private nextId = 1;
  /** The next answer throws `error` after `afterPieces` pieces (0: before the first). */
  failNextAnswer: { afterPieces: number; error: RegionVqaError } | undefined;
  disposed = false;

  async openConversation(
    image: Uint8Array,
    region: Region,
    options: OpenConversationOptions = {},
  ): Promise<Conversation> {
    const described = describeRegion(region);
    this.calls.push({ kind: "open", region: described, options, image });
    if (options.signal?.aborted) throw new RegionVqaError("aborted", "the request was cancelled");
    const id = `conv_scripted_${this.nextId++}`;
    const turns: Turn[] = [...(options.history ?? [])];
    const conversation: Conversation = {
      id,
      get turns() {
        return turns;
      },
      ask: (question, generation = {}) => {
        this.calls.push({ kind: "ask", conversation: id, question, options: generation });
        const text = `${described} | ${question} | turn ${turns.length + 1}`;
        const failure = this.failNextAnswer;
        this.failNextAnswer = undefined;
        const stream = scriptedAnswer(text, 10 * (turns.length + 1), generation, failure);
        void stream.result.then(
          (r) => turns.push({ question, answer: r.text }),
          () => undefined,
        );
        return stream;
      },
      dispose: async () => {
        this.live.delete(id);
      },
    };
    this.live.set(id, conversation);
    return conversation;
  }

  getConversation(id: string): Conversation | undefined {
    return this.live.get(id);
  }

  async captionRegions(
    _image: Uint8Array,
    regions: Region[],
    options: GenerationOptions & { detail?: "short" | "long" } = {},
  ): Promise<AnswerResult[]> {
    const described = regions.map(describeRegion);
    this.calls.push({ kind: "caption", regions: described, options });
    return Promise.all(
      described.map(async (d) => {
        const stream = scriptedAnswer(
          `caption (${options.detail ?? "short"}) of ${d}`,
          5,
          options,
          undefined,
        );
        for await (const _piece of stream);
        return stream.result;
      }),
    );
  }

  /** Conversations the API left open. */
  get openConversations(): string[] {
    return [...this.live.keys()];
  }

  async dispose(): Promise<void> {
    this.disposed = true;
  }
}
