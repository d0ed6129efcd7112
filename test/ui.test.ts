/**
 * The chat UI in a real browser (Debian's chromium driven by playwright-core) against the real server
 * and pipeline on small real models: upload an image, paint a region, ask, see the answer stream in,
 * ask a follow-up. Chromium is required: without it this test FAILS (CI installs it), it never skips.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { type BrowserContext } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { LocalRegionVqaPipeline } from "../src/pipeline/index.js";
import { makeImage, realPipeline, startServer, type RunningServer } from "./support/server.js";
import {
  askFormFields,
  buildUiFromSources,
  openChromium,
  recordFormFields,
  uiArtifacts,
  uiRoot,
} from "./support/browser.js";
import { repoRoot } from "./support/tiny-models.js";

const artifacts = uiArtifacts;

let pipeline: LocalRegionVqaPipeline;
let server: RunningServer;
let browser: BrowserContext;
let chrome: Awaited<ReturnType<typeof openChromium>>;

beforeAll(async () => {
  chrome = await openChromium();
  browser = chrome.browser;
  buildUiFromSources();
  pipeline = await realPipeline();
  server = await startServer(pipeline, { limits: { maxTokens: 10 } }, { uiRoot });
});

afterAll(async () => {
  await chrome?.close();
  await server?.close();
  await pipeline?.dispose();
});

describe("chat UI in chromium", () => {
  it("uploads an image, paints a region, asks, streams the answer, follows up", async () => {
    mkdirSync(artifacts, { recursive: true });
    const imagePath = path.join(artifacts, "ui-input.png");
    writeFileSync(imagePath, await makeImage(160, 120));

    const page = await browser.newPage();
    await page.setViewportSize({ width: 1100, height: 760 });
    await recordFormFields(page);
    const pageErrors: string[] = [];
    page.on("pageerror", (e) => pageErrors.push(e.message));
    const askRequests: Array<{ contentType: string; body: string; conversationHeader?: string }> = [];
    page.on("request", (r) => {
      if (r.url().endsWith("/v1/regions/ask")) {
        askRequests.push({
          contentType: r.headers()["content-type"] ?? "",
          body: r.postDataBuffer()?.toString("latin1") ?? "",
          conversationHeader: r.headers()["x-conversation-id"],
        });
      }
    });

    await page.goto(server.url + "/");
    await page.setInputFiles("#file", imagePath);
    await page.waitForSelector("#stage:not([hidden])");
    expect(await page.locator("#drop").isHidden()).toBe(true);

    // Paint a stroke with the brush across the left part of the image.
    const box = (await page.locator("#mask-canvas").boundingBox())!;
    await page.mouse.move(box.x + box.width * 0.15, box.y + box.height * 0.3);
    await page.mouse.down();
    await page.mouse.move(box.x + box.width * 0.35, box.y + box.height * 0.6, { steps: 8 });
    await page.mouse.up();
    await expect.poll(() => page.textContent("#region-note")).toBe("Region drawn.");
    const painted = (await page.evaluate(`(() => {
      const c = document.getElementById("mask-canvas");
      const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
      let n = 0;
      for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
      return n;
    })()`)) as number;
    expect(painted).toBeGreaterThan(100);

    await page.fill("#question", "What is in the highlighted region?");
    await page.click("#ask");
    const answer = page.locator("#messages li.assistant[data-done=true]").first();
    await answer.waitFor({ timeout: 60_000 });
    expect(askRequests[0].contentType).toMatch(/^multipart\/form-data/);
    const forms = await askFormFields(page);
    expect(forms[0]).toEqual(expect.arrayContaining(["image", "mask", "question", "stream"]));
    const text = (await answer.textContent()) ?? "";
    expect(text.length).toBeGreaterThan(0);
    await expect.poll(() => page.locator("#messages li.error").count()).toBe(0);

    // A follow-up continues the conversation (JSON with the conversation id, no image).
    await page.fill("#question", "And what colour is it?");
    await page.click("#ask");
    await page.locator("#messages li.assistant[data-done=true]").nth(1).waitFor({ timeout: 60_000 });
    expect(askRequests[1].contentType).toMatch(/^application\/json/);
    expect(JSON.parse(askRequests[1].body)).toMatchObject({
      conversation_id: expect.any(String),
      stream: true,
    });
    // The id travels as a header too, for load balancers that route on it (deploy/haproxy.cfg).
    expect(askRequests[0].conversationHeader).toBeUndefined();
    expect(askRequests[1].conversationHeader).toBe(JSON.parse(askRequests[1].body).conversation_id);
    await page.screenshot({ path: path.join(artifacts, "ui-desktop.png"), fullPage: true });

    // Phone-sized layout: the panes stack; errors are shown in plain words.
    await page.setViewportSize({ width: 390, height: 844 });
    const panes = (await page.evaluate(`(() => {
      const a = document.getElementById("image-pane").getBoundingClientRect();
      const b = document.getElementById("chat-pane").getBoundingClientRect();
      return { imageBottom: a.bottom, chatTop: b.top };
    })()`)) as { imageBottom: number; chatTop: number };
    expect(panes.chatTop).toBeGreaterThanOrEqual(panes.imageBottom - 1);
    await page.screenshot({ path: path.join(artifacts, "ui-phone.png"), fullPage: true });
    expect(pageErrors).toEqual([]);
    await page.close();
  });

  it("shows errors in plain words: an unreadable file, a question the server refuses", async () => {
    const page = await browser.newPage();
    await page.goto(server.url + "/");
    await page.setInputFiles("#file", {
      name: "photo.png",
      mimeType: "image/png",
      buffer: Buffer.from("not a picture"),
    });
    const localError = page.locator("#messages li.error").first();
    await localError.waitFor({ timeout: 10_000 });
    expect(await localError.textContent()).toMatch(/could not open that image/i);

    await page.setInputFiles("#file", path.join(artifacts, "ui-input.png"));
    await page.waitForSelector("#stage:not([hidden])");
    await page.fill("#question", "why ".repeat(600));
    await page.click("#ask");
    const serverError = page.locator("#messages li.error").first();
    await serverError.waitFor({ timeout: 10_000 });
    expect(await serverError.textContent()).toMatch(/question has \d+ characters; the limit is 2000/);
    await page.close();
  });
});

describe("chat UI with the bundled model in chromium", () => {
  it("a box dragged over the red square gets the answer 'red', streamed into the page", async () => {
    const { resolveModelOptions } = await import("../src/models/index.js");
    const { createPipeline } = await import("../src/pipeline/index.js");
    const shapes = await createPipeline({
      ...(await resolveModelOptions({ visionThreads: 1, llmThreads: 1, device: "cpu" })),
      maxConversations: 2,
    });
    const shapesServer = await startServer(shapes, {}, { uiRoot });
    try {
      const page = await browser.newPage();
      await page.setViewportSize({ width: 1100, height: 760 });
      await page.goto(shapesServer.url + "/");
      // examples/shapes.png: 307 x 206, a red square at about x 130-208, y 16-96.
      await page.setInputFiles("#file", path.join(repoRoot, "examples/shapes.png"));
      await page.waitForSelector("#stage:not([hidden])");
      await page.check('input[name="tool"][value="box"]');
      const box = (await page.locator("#mask-canvas").boundingBox())!;
      const at = (x: number, y: number) => [box.x + (x / 307) * box.width, box.y + (y / 206) * box.height];
      const [x1, y1] = at(126, 12);
      const [x2, y2] = at(212, 100);
      await page.mouse.move(x1, y1);
      await page.mouse.down();
      await page.mouse.move(x2, y2, { steps: 6 });
      await page.mouse.up();
      await page.fill("#question", "What colour is the highlighted region?");
      await page.click("#ask");
      const answer = page.locator("#messages li.assistant[data-done=true]").first();
      await answer.waitFor({ timeout: 60_000 });
      expect((await answer.textContent())?.toLowerCase()).toContain("red");
      await page.screenshot({ path: path.join(artifacts, "ui-shapes.png"), fullPage: true });
      await page.close();
    } finally {
      await shapesServer.close();
      await shapes.dispose();
    }
  });
});
