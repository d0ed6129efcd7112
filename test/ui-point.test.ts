/**
 * The chat UI's Point tool in a real browser (Debian's chromium driven by playwright-core) against the
 * real server and pipeline on the bundled model with its segmenter (models/shapes): a click on the red
 * square becomes its mask through POST /v1/regions/segment, Ask uses that mask like a painted one and
 * answers "red"; a click on the background shows the server's error and keeps the previous mask; an
 * exclude click, a stale response overtaken by a newer click, Escape, and a touch-up with the brush.
 * Chromium is required: without it this test FAILS (CI installs it), it never skips.
 */
import { mkdirSync } from "node:fs";
import path from "node:path";
import { type BrowserContext, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { LocalRegionVqaPipeline } from "../src/pipeline/index.js";
import { encodePng } from "../src/shapes/index.js";
import { encodeMaskPng } from "../src/vision/index.js";
import {
  askFormFields,
  buildUiFromSources,
  openChromium,
  recordFormFields,
  uiArtifacts,
  uiRoot,
} from "./support/browser.js";
import {
  background,
  blueCentre,
  bundledPipelineWithSegmenter,
  pointScene,
  pointSceneImage,
  pointSceneMasks,
  redCentre,
} from "./support/point-scene.js";
import { startServer, type RunningServer } from "./support/server.js";

const artifacts = uiArtifacts;

const scene = pointScene;
const rgb = pointSceneImage;
const [squareMask, circleMask] = pointSceneMasks;

let pipeline: LocalRegionVqaPipeline;
let server: RunningServer;
let browser: BrowserContext;
let chrome: Awaited<ReturnType<typeof openChromium>>;
let imagePng: Buffer;

beforeAll(async () => {
  chrome = await openChromium();
  browser = chrome.browser;
  buildUiFromSources();
  pipeline = await bundledPipelineWithSegmenter({ maxConversations: 2 });
  server = await startServer(pipeline, { limits: { maxTokens: 16 } }, { uiRoot });
  imagePng = Buffer.from(await encodePng(rgb));
}, 300_000);

afterAll(async () => {
  await chrome?.close();
  await server?.close();
  await pipeline?.dispose();
});

/** Where image pixel (x, y) is on the page. */
async function pagePoint(page: Page, [x, y]: [number, number]): Promise<[number, number]> {
  const box = (await page.locator("#mask-canvas").boundingBox())!;
  return [box.x + ((x + 0.5) / scene.width) * box.width, box.y + ((y + 0.5) / scene.height) * box.height];
}

async function click(page: Page, at: [number, number], shift = false): Promise<void> {
  const [x, y] = await pagePoint(page, at);
  if (shift) await page.keyboard.down("Shift");
  await page.mouse.click(x, y);
  if (shift) await page.keyboard.up("Shift");
}

/** How many mask-canvas pixels (painted: alpha >= 128) lie inside the square, the circle, neither. */
async function maskCounts(page: Page): Promise<{ square: number; circle: number; outside: number }> {
  const bits = (await page.evaluate(`(() => {
    const c = document.getElementById("mask-canvas");
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let s = "";
    for (let i = 3; i < d.length; i += 4) s += d[i] >= 128 ? "1" : "0";
    return s;
  })()`)) as string;
  expect(bits).toHaveLength(scene.width * scene.height);
  const counts = { square: 0, circle: 0, outside: 0 };
  for (let i = 0; i < bits.length; i++) {
    if (bits[i] !== "1") continue;
    if (squareMask.data[i]) counts.square++;
    else if (circleMask.data[i]) counts.circle++;
    else counts.outside++;
  }
  return counts;
}

const area = (m: { data: Uint8Array }) => m.data.reduce((a, b) => a + b, 0);

/** The mask is the red square's: nearly all of it, nothing of the circle, little else. */
async function expectSquareMask(page: Page): Promise<void> {
  const counts = await maskCounts(page);
  expect(counts.square).toBeGreaterThan(0.9 * area(squareMask));
  expect(counts.circle).toBe(0);
  expect(counts.outside).toBeLessThan(0.1 * area(squareMask));
}

/** The same for the blue circle. */
async function expectCircleMask(page: Page): Promise<void> {
  const counts = await maskCounts(page);
  expect(counts.circle).toBeGreaterThan(0.9 * area(circleMask));
  expect(counts.square).toBe(0);
  expect(counts.outside).toBeLessThan(0.1 * area(circleMask));
}

const markers = (page: Page, kind: "include" | "exclude") =>
  page.locator(`#points-layer .point.${kind}`).count();

describe("chat UI Point tool with the bundled segmenter in chromium", () => {
  it("a click on the red square becomes its mask; Ask uses it and answers red; errors keep the mask", async () => {
    mkdirSync(artifacts, { recursive: true });
    const page = await browser.newPage();
    await page.setViewportSize({ width: 1100, height: 760 });
    await recordFormFields(page);
    const pageErrors: string[] = [];
    page.on("pageerror", (e) => pageErrors.push(e.message));
    const segmentBodies: Array<{ image: string; points: number[][] }> = [];
    page.on("request", (r) => {
      if (r.url().endsWith("/v1/regions/segment")) segmentBodies.push(r.postDataJSON());
    });

    await page.goto(server.url + "/");
    await page.setInputFiles("#file", { name: "shapes.png", mimeType: "image/png", buffer: imagePng });
    await page.waitForSelector("#stage:not([hidden])");
    expect(await page.locator("#point-tools").isHidden()).toBe(true);
    await page.check('input[name="tool"][value="point"]');
    expect(await page.locator("#point-tools").isVisible()).toBe(true);

    // 1. One click on the red square: its mask, in the same canvas that painting uses.
    const started = performance.now();
    await click(page, redCentre);
    await expect.poll(() => page.textContent("#point-status"), { timeout: 60_000 }).toMatch(/^Score \d/);
    const firstClickMs = performance.now() - started;
    expect(await markers(page, "include")).toBe(1);
    expect(await page.textContent("#region-note")).toBe("Region drawn.");
    await expectSquareMask(page);
    // The original image as a data URL, the click in image pixels.
    expect(segmentBodies).toHaveLength(1);
    expect(segmentBodies[0].image).toBe(`data:image/png;base64,${imagePng.toString("base64")}`);
    expect(segmentBodies[0].points).toHaveLength(1);
    expect(segmentBodies[0].points[0]).toHaveLength(2);
    expect(Math.abs(segmentBodies[0].points[0][0] - redCentre[0])).toBeLessThanOrEqual(1);
    expect(Math.abs(segmentBodies[0].points[0][1] - redCentre[1])).toBeLessThanOrEqual(1);

    // 2. Ask: the segmented mask goes out as the mask file, like a painted one.
    await page.fill("#question", "What colour is the highlighted region?");
    await page.click("#ask");
    const answer = page.locator("#messages li.assistant[data-done=true]").first();
    await answer.waitFor({ timeout: 60_000 });
    expect(await answer.textContent()).toMatch(/red/i);
    const forms = await askFormFields(page);
    expect(forms[0]).toEqual(expect.arrayContaining(["image", "mask", "question"]));
    await page.screenshot({ path: path.join(artifacts, "ui-point.png"), fullPage: true });

    // 3. Escape clears the points (the mask stays until a click replaces it). A click on the background
    //    alone: the server's segment_empty message in the error area; the click is taken back, the mask
    //    stays, nothing is left busy.
    await page.keyboard.press("Escape");
    expect(await page.locator("#points-layer .point").count()).toBe(0);
    await click(page, background);
    const error = page.locator("#messages li.error").first();
    await error.waitFor({ timeout: 30_000 });
    expect(await error.textContent()).toMatch(/no object at the given points/i);
    expect(await markers(page, "include")).toBe(0);
    await expectSquareMask(page);
    expect(await page.getAttribute("#stage", "aria-busy")).toBe("false");
    expect(await page.isEnabled("#ask")).toBe(true);

    // 4. The UI carries on: a click on the square again, then a Shift+click on the circle, an exclude
    //    point (label 0); the image's encoding is cached now.
    await click(page, redCentre);
    await expect.poll(() => page.textContent("#point-status"), { timeout: 30_000 }).toMatch(/^Score \d/);
    const before = segmentBodies.length;
    await click(page, blueCentre, true);
    await expect
      .poll(() => page.textContent("#point-status"), { timeout: 30_000 })
      .toMatch(/^Score \d.*cached/);
    expect(segmentBodies[before].points).toHaveLength(2);
    expect(segmentBodies[before].points[1]).toHaveLength(3);
    expect(segmentBodies[before].points[1][2]).toBe(0);
    expect([await markers(page, "include"), await markers(page, "exclude")]).toEqual([1, 1]);
    await expectSquareMask(page);

    // 5. "Clear points" removes them; the mask stays.
    await page.click("#clear-points");
    expect(await page.locator("#points-layer .point").count()).toBe(0);
    await expectSquareMask(page);

    // 6. A stale answer: the first click's response is held back (and would be a whole-image mask);
    //    a second click aborts it, and only the second click's mask lands.
    const fullMask = await encodeMaskPng({
      width: scene.width,
      height: scene.height,
      data: new Uint8Array(scene.width * scene.height).fill(1),
    });
    let held = 0;
    let firstArrived!: () => void;
    const arrived = new Promise<void>((resolve) => (firstArrived = resolve));
    const failed: string[] = [];
    page.on("requestfailed", (r) => {
      if (r.url().endsWith("/v1/regions/segment")) failed.push(r.failure()?.errorText ?? "");
    });
    await page.route("**/v1/regions/segment", async (route) => {
      if (held++ > 0) return route.continue();
      firstArrived();
      await new Promise((r) => setTimeout(r, 1_500));
      await route
        .fulfill({
          status: 200,
          contentType: "application/json",
          body: JSON.stringify({
            width: scene.width,
            height: scene.height,
            mask: { png: `data:image/png;base64,${Buffer.from(fullMask).toString("base64")}` },
            score: 1,
            timings: { embeddings_cached: true },
          }),
        })
        .catch(() => undefined); // the page has aborted it
    });
    await click(page, blueCentre);
    await arrived;
    await click(page, redCentre, true);
    await expect.poll(() => page.textContent("#point-status"), { timeout: 30_000 }).toMatch(/^Score \d/);
    await expectCircleMask(page);
    // The held-back answer arrives after the newer one (or never, aborted): it must not land.
    await new Promise((r) => setTimeout(r, 2_000));
    expect(failed.length).toBeGreaterThanOrEqual(1);
    await expectCircleMask(page);
    expect([await markers(page, "include"), await markers(page, "exclude")]).toEqual([1, 1]);
    await page.unroute("**/v1/regions/segment");

    // 7. A server without a segmenter (its answer stubbed here; the route's own test is in
    //    segment-api.test.ts): its message shows, the mask stays.
    const maskBefore = await maskCounts(page);
    await page.route("**/v1/regions/segment", (route) =>
      route.fulfill({
        status: 400,
        contentType: "application/json",
        body: JSON.stringify({
          error: { code: "segmenter_not_installed", message: "No segmenter is loaded (stub)." },
        }),
      }),
    );
    await click(page, blueCentre);
    await expect.poll(() => page.locator("#messages li.error").last().textContent()).toMatch(/\(stub\)/);
    expect(await maskCounts(page)).toEqual(maskBefore);
    expect(await page.getAttribute("#stage", "aria-busy")).toBe("false");
    await page.unroute("**/v1/regions/segment");

    // 8. The brush still touches up a segmented mask.
    await page.keyboard.press("Escape");
    await click(page, redCentre);
    await expect.poll(() => page.textContent("#point-status"), { timeout: 30_000 }).toMatch(/^Score \d/);
    await expectSquareMask(page);
    await page.check('input[name="tool"][value="brush"]');
    const [bx, by] = await pagePoint(page, blueCentre);
    await page.mouse.move(bx, by);
    await page.mouse.down();
    await page.mouse.move(bx + 10, by + 10, { steps: 4 });
    await page.mouse.up();
    expect((await maskCounts(page)).circle).toBeGreaterThan(0);
    await expect.poll(() => page.locator("#messages li.error").count()).toBe(2);

    expect(pageErrors).toEqual([]);
    console.log(`ui-point: first click to mask ${Math.round(firstClickMs)} ms`);
    await page.close();
  });
});
