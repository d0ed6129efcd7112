/** What the Chromium tests of the chat UI share: the browser, the UI build, where screenshots go. */
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium, type BrowserContext, type Page } from "playwright-core";
import { repoRoot } from "./tiny-models.js";

export const chromiumPath = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
/** Where the UI is built to and served from. */
export const uiRoot = path.join(repoRoot, "dist", "ui");
/** Screenshots and inputs the UI tests leave for a human to look at (git ignores it). */
export const uiArtifacts = path.join(repoRoot, "test", "artifacts");

/** Builds the UI from its sources, so that a test runs what the sources say. */
export function buildUiFromSources(): void {
  execFileSync(
    process.execPath,
    [path.join(repoRoot, "node_modules/vite/bin/vite.js"), "build", "--config", "src/api/ui/vite.config.ts"],
    { cwd: repoRoot, stdio: "pipe" },
  );
}

/** Headless Debian Chromium with a fresh profile; `close` also removes the profile. */
export async function openChromium(): Promise<{ browser: BrowserContext; close(): Promise<void> }> {
  if (!existsSync(chromiumPath)) {
    throw new Error(
      `The browser test needs chromium at ${chromiumPath} (apt-get install chromium, or set CHROMIUM_PATH).`,
    );
  }
  const userDataDir = mkdtempSync(path.join(os.tmpdir(), "region-vqa-chromium-"));
  // playwright passes the profile as --user-data-dir.
  const browser = await chromium.launchPersistentContext(userDataDir, {
    executablePath: chromiumPath,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--no-first-run",
    ],
  });
  return {
    browser,
    close: async () => {
      await browser.close();
      rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}

/**
 * Records the form fields of every multipart request the page sends (playwright cannot show multipart
 * bodies with files); `askFormFields(page)` reads them back.
 */
export async function recordFormFields(page: Page): Promise<void> {
  await page.addInitScript(`(() => {
    const original = window.fetch;
    window.__askForms = [];
    window.fetch = (url, init) => {
      if (init && init.body instanceof FormData) window.__askForms.push([...init.body.keys()]);
      return original(url, init);
    };
  })()`);
}

export async function askFormFields(page: Page): Promise<string[][]> {
  return (await page.evaluate("window.__askForms")) as string[][];
}
