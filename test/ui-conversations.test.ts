/**
 * The chat UI frees the server's conversation slots it no longer uses: when the region changes or a
 * new image is loaded, the old conversation is ended on the server (DELETE), not left to hold one of
 * the LLM's few sequences until it expires. Real browser (Debian's chromium via playwright-core),
 * real server and pipeline on the small real models. Chromium is required: without it this FAILS.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { type BrowserContext, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { LocalRegionVqaPipeline } from "../src/pipeline/index.js";
import { makeImage, realPipeline, startServer, type RunningServer } from "./support/server.js";
import { buildUiFromSources, openChromium, uiRoot } from "./support/browser.js";

let pipeline: LocalRegionVqaPipeline;
let server: RunningServer;
let browser: BrowserContext;
let chrome: Awaited<ReturnType<typeof openChromium>>;
let imagePath: string;

beforeAll(async () => {
  chrome = await openChromium();
  browser = chrome.browser;
  buildUiFromSources();
  pipeline = await realPipeline();
  server = await startServer(pipeline, { limits: { maxTokens: 4 } }, { uiRoot });
  const dir = path.join(os.tmpdir(), "region-vqa-ui-conversations");
  mkdirSync(dir, { recursive: true });
  imagePath = path.join(dir, "input.png");
  writeFileSync(imagePath, await makeImage(160, 120));
});

afterAll(async () => {
  await chrome?.close();
  await server?.close();
  await pipeline?.dispose();
});

async function stroke(page: Page, from: [number, number], to: [number, number]): Promise<void> {
  const box = (await page.locator("#mask-canvas").boundingBox())!;
  await page.mouse.move(box.x + box.width * from[0], box.y + box.height * from[1]);
  await page.mouse.down();
  await page.mouse.move(box.x + box.width * to[0], box.y + box.height * to[1], { steps: 4 });
  await page.mouse.up();
}

async function askAndWait(page: Page, answers: number): Promise<void> {
  await page.fill("#question", "What is in the highlighted region?");
  await page.click("#ask");
  await page
    .locator("#messages li.assistant[data-done=true]")
    .nth(answers - 1)
    .waitFor({ timeout: 60_000 });
}

const liveConversations = () => pipeline.stats().conversations;

describe("chat UI conversation slots", () => {
  it("ends the old conversation on the server when the region changes or a new image loads", async () => {
    const page = await browser.newPage();
    await page.goto(server.url + "/");
    await page.setInputFiles("#file", imagePath);
    await page.waitForSelector("#stage:not([hidden])");
    const before = liveConversations();

    await stroke(page, [0.1, 0.2], [0.3, 0.5]);
    await askAndWait(page, 1);
    expect(liveConversations()).toBe(before + 1);
    // A new region: the next question starts a new conversation, so the old one is freed now.
    await stroke(page, [0.6, 0.2], [0.8, 0.5]);
    await expect.poll(liveConversations, { timeout: 5_000 }).toBe(before);

    await askAndWait(page, 2);
    expect(liveConversations()).toBe(before + 1);
    // A new image: the same.
    await page.setInputFiles("#file", imagePath);
    await expect.poll(liveConversations, { timeout: 5_000 }).toBe(before);
    await page.close();
  });
});
