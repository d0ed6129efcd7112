/**
 * The official `openai` client, used as a user would (baseURL pointed at the server), against the
 * real pipeline on small real models: non-streamed and streamed answers with an image and a region,
 * usage, multi-turn histories, and the server's errors as the client sees them.
 */
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { LocalRegionVqaPipeline } from "../src/pipeline/index.js";
import {
  dataUrl,
  makeImage,
  realPipeline,
  startServer,
  userMessageWithImage,
  type RunningServer,
} from "./support/server.js";

let pipeline: LocalRegionVqaPipeline;
let server: RunningServer;
let client: OpenAI;
let image: string;
let rgba: string;

beforeAll(async () => {
  pipeline = await realPipeline();
  server = await startServer(pipeline, { apiKey: "test-key", limits: { maxTokens: 16 } });
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "test-key", maxRetries: 0 });
  image = dataUrl(await makeImage(64, 48));
  rgba = dataUrl(await makeImage(64, 48, true));
});
afterAll(async () => {
  await server?.close();
  await pipeline?.dispose();
});

const userTurn = (url: string, text: string): OpenAI.ChatCompletionMessageParam =>
  userMessageWithImage(url, text);

describe("OpenAI-compatible API with the openai client", () => {
  it("lists the model", async () => {
    const models = await client.models.list();
    expect(models.data.map((m) => m.id)).toEqual(["tiny-test"]);
  });

  it("answers a non-streamed request with a region, with usage", async () => {
    const completion = await client.chat.completions.create({
      model: "tiny-test",
      messages: [userTurn(image, "What is in the highlighted region?")],
      max_tokens: 6,
      temperature: 0,
      // Extension field: the region (here a box) instead of the image's alpha channel.
      // @ts-expect-error not part of OpenAI's request type
      region: { box: [0, 0, 32, 48] },
    });
    expect(completion.object).toBe("chat.completion");
    expect(completion.model).toBe("tiny-test");
    expect(completion.choices).toHaveLength(1);
    expect(completion.choices[0].message.role).toBe("assistant");
    expect(typeof completion.choices[0].message.content).toBe("string");
    expect(["stop", "length"]).toContain(completion.choices[0].finish_reason);
    expect(completion.usage!.completion_tokens).toBeGreaterThan(0);
    expect(completion.usage!.completion_tokens).toBeLessThanOrEqual(6);
    expect(completion.usage!.total_tokens).toBe(
      completion.usage!.prompt_tokens + completion.usage!.completion_tokens,
    );
  });

  it("streams the same answer in OpenAI chunks, with usage when asked", async () => {
    const request = {
      model: "tiny-test",
      messages: [userTurn(rgba, "Describe it.")],
      max_completion_tokens: 8,
      seed: 1,
    };
    const plain = await client.chat.completions.create(request);
    const stream = await client.chat.completions.create({
      ...request,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = "";
    let chunks = 0;
    let finish: string | null = null;
    let usage: OpenAI.CompletionUsage | undefined;
    for await (const chunk of stream) {
      chunks++;
      expect(chunk.object).toBe("chat.completion.chunk");
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices) {
        text += choice.delta.content ?? "";
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
    expect(chunks).toBeGreaterThan(2);
    expect(text.trim()).toBe(plain.choices[0].message.content);
    expect(finish).toBe(plain.choices[0].finish_reason);
    expect(usage?.completion_tokens).toBe(plain.usage?.completion_tokens);
  });

  it("the region defaults to the image's alpha channel, same as stating it", async () => {
    const base = { model: "tiny-test", messages: [userTurn(rgba, "What?")], max_tokens: 6 };
    const byAlpha = await client.chat.completions.create(base);
    // @ts-expect-error extension field
    const byBox = await client.chat.completions.create({ ...base, region: { box: [32, 0, 64, 48] } });
    expect(byAlpha.choices[0].message.content).toBe(byBox.choices[0].message.content);
  });

  it("replays earlier turns as history (multi-turn), with a system message", async () => {
    const completion = await client.chat.completions.create({
      model: "tiny-test",
      messages: [
        { role: "system", content: "You are terse." },
        userTurn(image, "What colour is it?"),
        { role: "assistant", content: "Red." },
        { role: "user", content: "Are you sure?" },
      ],
      max_tokens: 4,
    });
    const single = await client.chat.completions.create({
      model: "tiny-test",
      messages: [{ role: "system", content: "You are terse." }, userTurn(image, "Are you sure?")],
      max_tokens: 4,
    });
    // The history is part of the prompt: more prompt tokens than the question alone.
    expect(completion.usage!.prompt_tokens).toBeGreaterThan(single.usage!.prompt_tokens);
  });

  it("errors reach the client as OpenAI errors with our codes", async () => {
    const noKey = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "wrong", maxRetries: 0 });
    await expect(noKey.models.list()).rejects.toMatchObject({ status: 401 });
    await expect(
      client.chat.completions.create({
        model: "tiny-test",
        messages: [{ role: "user", content: "no image" }],
      }),
    ).rejects.toMatchObject({ status: 400, code: "image_missing" });
    await expect(
      client.chat.completions.create({
        model: "tiny-test",
        messages: [userTurn("https://example.com/cat.png", "Q")],
      }),
    ).rejects.toMatchObject({ status: 403, code: "remote_fetch_forbidden" });
  });
});
