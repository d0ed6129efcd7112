/**
 * `region-vqa serve` as a real child process (support/run-cli.ts): broken model files stop it
 * at startup with a message naming the file, and SIGTERM drains it: in-flight requests finish within
 * the grace period, new ones are refused, and the process exits 0.
 */
import type { ChildProcess } from "node:child_process";
import { cpSync, mkdtempSync, rmSync, statSync, truncateSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { spawnCli } from "./support/run-cli.js";
import { dataUrl, makeImage } from "./support/server.js";
import { tinyModels, type TinyModels } from "./support/tiny-models.js";

let models: TinyModels;
let scratch: string;
const children = new Set<ChildProcess>();

beforeAll(async () => {
  models = await tinyModels();
  scratch = mkdtempSync(path.join(os.tmpdir(), "region-vqa-faults-"));
});
afterAll(() => {
  for (const child of children) if (child.exitCode === null) child.kill("SIGKILL");
  rmSync(scratch, { recursive: true, force: true });
});

interface Served {
  child: ChildProcess;
  stderr: () => string;
  /** Resolves with the URL once the server listens (rejects if it exits first). */
  listening: Promise<string>;
  exited: Promise<number | null>;
}

function serve(files: TinyModels, env: Record<string, string> = {}): Served {
  const child = spawnCli(
    [
      "serve",
      "--port",
      "0",
      "--vision",
      files.vision,
      "--projector",
      files.projector,
      "--llm",
      files.llm,
      "--device",
      "cpu",
      "--threads",
      "1",
      "--llm-threads",
      "1",
      "--context-size",
      "2048",
    ],
    { env: { REGION_VQA_LOG_LEVEL: "warn", ...env } },
  );
  children.add(child);
  let stderr = "";
  child.stdout!.resume();
  const exited = new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)));
  const listening = new Promise<string>((resolve, reject) => {
    child.stderr!.on("data", (d: Buffer) => {
      stderr += d.toString("utf8");
      const match = /listening on (http:\/\/\S+)/.exec(stderr);
      if (match) resolve(match[1]);
    });
    void exited.then((code) => reject(new Error(`exited with ${code} before listening:\n${stderr}`)));
  });
  listening.catch(() => undefined);
  return { child, stderr: () => stderr, listening, exited };
}

/** A private copy of the tiny models, so that one file can be broken. */
function copyModels(name: string): TinyModels {
  const dir = path.join(scratch, name);
  const copy = {
    vision: path.join(dir, "vision"),
    projector: path.join(dir, "mmproj.gguf"),
    llm: path.join(dir, "llm.gguf"),
  };
  cpSync(models.vision, copy.vision, { recursive: true });
  cpSync(models.projector, copy.projector);
  cpSync(models.llm, copy.llm);
  return copy;
}

const halve = (file: string) => truncateSync(file, Math.floor(statSync(file).size / 2));

describe("broken model files", () => {
  const faults: Array<{ name: string; breakIt: (m: TinyModels) => string }> = [
    {
      name: "vision manifest missing",
      breakIt: (m) => {
        const file = path.join(m.vision, "manifest.json");
        rmSync(file);
        return file;
      },
    },
    {
      name: "vision ONNX file truncated",
      breakIt: (m) => {
        const file = path.join(m.vision, "model.onnx");
        halve(file);
        return file;
      },
    },
    {
      name: "LLM GGUF truncated",
      breakIt: (m) => {
        halve(m.llm);
        return m.llm;
      },
    },
    {
      name: "projector missing",
      breakIt: (m) => {
        rmSync(m.projector);
        return m.projector;
      },
    },
  ];

  // One process per fault, all at once: each spends most of its time starting up.
  it.concurrent.each(faults.map((f) => [f.name, f] as const))(
    "%s: serve exits non-zero naming the file",
    async (_name, fault) => {
      const files = copyModels(fault.name.replace(/\W+/g, "-"));
      const broken = fault.breakIt(files);
      const served = serve(files);
      const code = await served.exited;
      expect(code, served.stderr()).toBe(2);
      expect(served.stderr()).toContain(broken);
      expect(served.stderr()).toMatch(/the models failed to load/);
    },
    120_000,
  );
});

describe("SIGTERM", () => {
  async function ready(url: string): Promise<void> {
    for (let i = 0; i < 600; i++) {
      const response = await fetch(`${url}/readyz`).catch(() => undefined);
      if (response?.status === 200) return;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error("never ready");
  }

  /** Starts a long streamed question; once its first text piece arrived, `rest` is the whole stream. */
  async function longStream(url: string, maxTokens: number) {
    const response = await fetch(`${url}/v1/regions/ask`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        image: dataUrl(await makeImage(64, 48)),
        question: "Describe it.",
        stream: true,
        max_tokens: maxTokens,
      }),
    });
    expect(response.status).toBe(200);
    const reader = response.body!.getReader();
    const decoder = new TextDecoder();
    let text = "";
    while (!text.includes("event: delta")) {
      const { value, done } = await reader.read();
      if (done) break;
      text += decoder.decode(value, { stream: true });
    }
    const rest = (async (): Promise<string> => {
      for (;;) {
        const { value, done } = await reader.read().catch(() => ({ value: undefined, done: true }));
        if (done) return text;
        text += decoder.decode(value, { stream: true });
      }
    })();
    // Wrapped: returning the promise itself from this async function would wait for it.
    return { rest };
  }

  it("finishes the request in flight, refuses new ones, exits 0", async () => {
    const served = serve(models, { REGION_VQA_MAX_TOKENS: "1900", REGION_VQA_SHUTDOWN_GRACE_MS: "60000" });
    const url = await served.listening;
    await ready(url);
    const stream = await longStream(url, 600);
    served.child.kill("SIGTERM");
    const signalledAt = performance.now();
    await new Promise((r) => setTimeout(r, 200));
    // A new request after SIGTERM: refused (connection refused, or 503 while the socket closes).
    const late = await fetch(`${url}/healthz`).then(
      (r) => r.status,
      () => "refused",
    );
    expect([503, "refused"]).toContain(late);

    const text = await stream.rest;
    const done = /event: done\ndata: (.*)\n/.exec(text);
    expect(done, text.slice(-300)).not.toBeNull();
    const result = JSON.parse(done![1]) as { finish_reason: string; usage: { completion_tokens: number } };
    expect(result.finish_reason).toBe("length");
    expect(result.usage.completion_tokens).toBe(600);
    expect(await served.exited).toBe(0);
    expect(served.stderr()).toMatch(/SIGTERM, shutting down/);
    expect(served.stderr()).toMatch(/region-vqa: stopped\n/);
    expect(performance.now() - signalledAt).toBeLessThan(30_000);
  }, 120_000);

  it("aborts what is left when the grace period runs out, and still exits 0", async () => {
    const served = serve(models, { REGION_VQA_MAX_TOKENS: "1900", REGION_VQA_SHUTDOWN_GRACE_MS: "300" });
    const url = await served.listening;
    await ready(url);
    const stream = await longStream(url, 1900);
    const signalledAt = performance.now();
    served.child.kill("SIGTERM");
    const text = await stream.rest;
    expect(text.slice(-400)).toMatch(/event: error\ndata: .*"code":"aborted"/);
    expect(text).not.toMatch(/event: done/);
    expect(await served.exited).toBe(0);
    expect(performance.now() - signalledAt).toBeLessThan(5000);
    expect(served.stderr()).toMatch(/grace period ran out/);
  }, 120_000);
});
