/**
 * Shared pieces of the server tests: small test images made with sharp, a real server on loopback,
 * an SSE reader, and the pipeline the happy paths run on.
 */
import sharp from "sharp";
import type { FastifyInstance } from "fastify";
import { buildServer, type BuildServerOptions } from "../src/api/index.js";
import { loadConfig, type ServerConfigInput } from "../src/config.js";
import { decodeImage } from "../src/vision/decode.js";
import { regionToMask } from "../src/vision/region.js";
import type {
  AnswerResult,
  AnswerStream,
  Conversation,
  GenerationOptions,
  OpenConversationOptions,
  RegionVqaPipeline,
  Turn,
} from "../src/pipeline/types.js";
import type { Region } from "../src/vision/types.js";

/** A W x H PNG: left half red, right half blue (optionally with an alpha channel: right half opaque). */
export async function makeImage(width = 64, height = 48, withAlpha = false): Promise<Buffer> {
  const channels = withAlpha ? 4 : 3;
  const data = Buffer.alloc(width * height * channels);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = (y * width + x) * channels;
      const right = x >= width / 2;
      data[i] = right ? 0 : 220;
      data[i + 1] = 30;
      data[i + 2] = right ? 220 : 0;
      if (withAlpha) data[i + 3] = right ? 255 : 0;
    }
  }
  return sharp(data, { raw: { width, height, channels } }).png().toBuffer();
}

/** A W x H mask PNG, white inside the box [x1, y1, x2, y2). */
export async function makeMask(
  width: number,
  height: number,
  box: [number, number, number, number],
): Promise<Buffer> {
  const data = Buffer.alloc(width * height);
  for (let y = box[1]; y < box[3]; y++) data.fill(255, y * width + box[0], y * width + box[2]);
  return sharp(data, { raw: { width, height, channels: 1 } })
    .png()
    .toBuffer();
}

export const dataUrl = (png: Buffer) => `data:image/png;base64,${png.toString("base64")}`;

export interface RunningServer {
  app: FastifyInstance;
  url: string;
  close(): Promise<void>;
}

export async function startServer(
  pipeline: BuildServerOptions["pipeline"],
  config: ServerConfigInput = {},
  extra: Partial<BuildServerOptions> = {},
): Promise<RunningServer> {
  const app = await buildServer({
    pipeline,
    config: loadConfig({ env: {}, flags: { logLevel: "silent", ...config } }),
    disposePipelineOnClose: false,
    ...extra,
  });
  const address = await app.listen({ host: "127.0.0.1", port: 0 });
  return { app, url: address, close: () => app.close() };
}

export interface SseEvent {
  event?: string;
  data: string;
}

/** Reads a whole text/event-stream response into its events. */
export async function readSse(response: Response): Promise<SseEvent[]> {
  const text = await response.text();
  const events: SseEvent[] = [];
  for (const block of text.split("\n\n")) {
    if (block.trim() === "") continue;
    const event: SseEvent = { data: "" };
    for (const line of block.split("\n")) {
      if (line.startsWith("event: ")) event.event = line.slice(7);
      else if (line.startsWith("data: ")) event.data += line.slice(6);
    }
    events.push(event);
  }
  return events;
}

/*
 * TEMPORARY TEST DOUBLE — remove when src/pipeline/index.ts (`createPipeline`, the real pipeline,
 * written by the lead) lands; the happy-path tests must then run on the real pipeline. Until then it
 * stands in for the models only: it decodes the image and rasterises the region with the real vision
 * code, and answers with facts it measured (region size, mean colour, turn number), streamed word by
 * word, honouring maxTokens, stop and abort, so the server's plumbing is tested for real.
 */
export class TemporaryPipelineDouble implements RegionVqaPipeline {
  readonly models = { id: "region-vqa-double", vision: "double", projector: "double", llm: "double" };
  private readonly conversations = new Map<string, Conversation>();
  private nextId = 1;
  disposed = false;

  private async describe(image: Uint8Array, region: Region): Promise<string> {
    const decoded = await decodeImage(image);
    const mask = regionToMask(region, decoded.width, decoded.height);
    let n = 0;
    let red = 0;
    let blue = 0;
    for (let i = 0; i < mask.data.length; i++) {
      if (!mask.data[i]) continue;
      n++;
      red += decoded.data[i * 3];
      blue += decoded.data[i * 3 + 2];
    }
    const colour = red > blue ? "red" : "blue";
    return `${n} pixels mostly ${colour}`;
  }

  private stream(
    words: string[],
    options: GenerationOptions = {},
    onDone?: (text: string) => void,
  ): AnswerStream {
    const maxTokens = options.maxTokens ?? 256;
    let resolve!: (r: AnswerResult) => void;
    let reject!: (e: unknown) => void;
    const result = new Promise<AnswerResult>((res, rej) => ((resolve = res), (reject = rej)));
    result.catch(() => undefined);
    async function* generate(): AsyncGenerator<string> {
      let text = "";
      let count = 0;
      let finishReason: AnswerResult["finishReason"] = "stop";
      try {
        for (const word of words) {
          if (options.signal?.aborted) {
            finishReason = "abort";
            break;
          }
          if (count >= maxTokens) {
            finishReason = "length";
            break;
          }
          const piece = (count === 0 ? "" : " ") + word;
          if (options.stop?.some((s) => (text + piece).includes(s))) break;
          text += piece;
          count++;
          await new Promise((r) => setTimeout(r, 2));
          yield piece;
        }
        onDone?.(text);
        resolve({ text, promptTokens: 10, completionTokens: count, finishReason });
      } catch (err) {
        reject(err);
        throw err;
      }
    }
    const iterable = generate();
    return { result, [Symbol.asyncIterator]: () => iterable };
  }

  async openConversation(
    image: Uint8Array,
    region: Region,
    options: OpenConversationOptions = {},
  ): Promise<Conversation> {
    const facts = await this.describe(image, region);
    const id = `conv-${this.nextId++}`;
    const turns: Turn[] = [...(options.history ?? [])];
    const conversations = this.conversations;
    const stream = this.stream.bind(this);
    const conversation: Conversation = {
      id,
      turns,
      ask(question, opts) {
        const words = `Turn ${turns.length + 1}: the region has ${facts}; you asked "${question}".`.split(
          " ",
        );
        return stream(words, opts, (answer) => turns.push({ question, answer }));
      },
      async close() {
        conversations.delete(id);
      },
    };
    this.conversations.set(id, conversation);
    return conversation;
  }

  getConversation(id: string): Conversation | undefined {
    return this.conversations.get(id);
  }

  async captionRegions(
    image: Uint8Array,
    regions: Region[],
    options: GenerationOptions & { detail?: "short" | "long" } = {},
  ): Promise<AnswerResult[]> {
    const out: AnswerResult[] = [];
    for (const region of regions) {
      const facts = await this.describe(image, region);
      const words = (
        options.detail === "long" ? `A long caption: a region of ${facts}.` : `Region of ${facts}.`
      ).split(" ");
      const s = this.stream(words, options);
      for await (const _ of s);
      out.push(await s.result);
    }
    return out;
  }

  async dispose(): Promise<void> {
    this.disposed = true;
  }
}

/** A response's JSON body, loosely typed for assertions. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function json(response: Response): Promise<any> {
  return response.json();
}
