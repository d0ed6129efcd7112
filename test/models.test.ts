import { mkdir, readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { Writable } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  createProgressPrinter,
  formatProgressLine,
  listInstalledModels,
  resolveModelPreset,
  type DownloadProgress,
  type InstalledEntry,
} from "../src/models/index.js";
import { fakeBytes, sha256Of, startFakeHost, type FakeHost } from "./support/pull-fakehost.js";
import { runCli } from "./support/run-cli.js";
import {
  failure,
  HF_DIR,
  LLM_Q4,
  MMPROJ,
  removeTempModelsDirs,
  tempModelsDir,
} from "./support/pull-helpers.js";

async function writeModelFolder(
  dir: string,
  kind: string,
  files: Record<string, Buffer>,
  roles: string[] = [],
) {
  await mkdir(dir, { recursive: true });
  const listed = Object.entries(files).map(([name, body], i) => ({
    path: name,
    bytes: body.length,
    sha256: sha256Of(body),
    role: roles[i] ?? "weights",
  }));
  for (const [name, body] of Object.entries(files)) await writeFile(path.join(dir, name), body);
  const manifest = {
    kind,
    formatVersion: 1,
    name: path.basename(dir),
    createdAt: "",
    config: {},
    files: listed,
  };
  await writeFile(path.join(dir, "manifest.json"), JSON.stringify(manifest));
}

const byName = (entries: InstalledEntry[]) => Object.fromEntries(entries.map((e) => [e.name, e]));

describe("installed models", () => {
  it("tells complete folders from incomplete ones, partial downloads and files kept aside", async () => {
    const root = await tempModelsDir();
    await writeModelFolder(path.join(root, "alpha-clip-l14-336", "grit-20m"), "alpha-clip-vision", {
      "model.onnx": fakeBytes(3000, 1),
    });
    await writeModelFolder(
      path.join(root, "llava-v1.5-7b"),
      "llm-gguf",
      { [MMPROJ]: fakeBytes(1000, 2), [LLM_Q4]: fakeBytes(2000, 3) },
      ["projector", "llm"],
    );
    // A vision folder whose weights were truncated after the manifest was written.
    const truncated = path.join(root, "alpha-clip-l14-336", "grit-1m");
    await writeModelFolder(truncated, "alpha-clip-vision", { "model.onnx": fakeBytes(3000, 4) });
    await writeFile(path.join(truncated, "model.onnx"), fakeBytes(100, 4));
    // A download in progress beside the finished files, and a file that failed its checksum.
    await writeFile(path.join(root, "llava-v1.5-7b", "llava-v1.5-7b-Q8_0.gguf.partial"), fakeBytes(500, 5));
    await writeFile(
      path.join(root, "llava-v1.5-7b", "llava-v1.5-7b-Q8_0.gguf.partial.json"),
      JSON.stringify({ formatVersion: 1, url: "x", totalBytes: 7000, updatedAt: "" }),
    );
    await mkdir(path.join(root, ".downloads"));
    await writeFile(path.join(root, ".downloads", "clip.pth.corrupt"), fakeBytes(10, 6));

    const entries = byName(await listInstalledModels({ roots: [root] }));
    expect(Object.keys(entries).sort()).toEqual([
      ".downloads/clip.pth.corrupt",
      "alpha-clip-l14-336/grit-1m",
      "alpha-clip-l14-336/grit-20m",
      "llava-v1.5-7b",
      "llava-v1.5-7b/llava-v1.5-7b-Q8_0.gguf.partial",
    ]);
    expect(entries["alpha-clip-l14-336/grit-20m"]).toMatchObject({
      complete: true,
      bytes: 3000,
      problems: [],
    });
    expect(entries["llava-v1.5-7b"]).toMatchObject({ kind: "llm-gguf", complete: true, bytes: 3000 });
    expect(entries["alpha-clip-l14-336/grit-1m"]).toMatchObject({
      complete: false,
      problems: ["model.onnx has 100 bytes, the manifest says 3000"],
    });
    expect(entries["llava-v1.5-7b/llava-v1.5-7b-Q8_0.gguf.partial"]).toMatchObject({
      kind: "partial-download",
      complete: false,
      bytes: 500,
    });
    expect(entries["llava-v1.5-7b/llava-v1.5-7b-Q8_0.gguf.partial"].problems[0]).toContain(
      "500 of 7000 bytes",
    );
    expect(entries[".downloads/clip.pth.corrupt"].kind).toBe("corrupt-file");

    // Re-hashing finds a file whose bytes changed but whose size did not.
    await writeFile(path.join(root, "llava-v1.5-7b", LLM_Q4), fakeBytes(2000, 99));
    const quick = byName(await listInstalledModels({ roots: [root] }));
    expect(quick["llava-v1.5-7b"].complete).toBe(true);
    const verified = byName(await listInstalledModels({ roots: [root], verifyHashes: true }));
    expect(verified["llava-v1.5-7b"].complete).toBe(false);
    expect(verified["llava-v1.5-7b"].problems[0]).toMatch(/sha256 .* differs/);
  });

  it("resolves a preset from whatever was pulled and says what to pull when parts are missing", async () => {
    const root = await tempModelsDir();
    const err = await failure(resolveModelPreset("alpha-llava-7b", { roots: [root] }));
    expect(err.code).toBe("model_not_found");
    expect(err.message).toContain("Run `region-vqa pull alpha-llava-7b`");

    const unknown = await failure(resolveModelPreset("llava-13b", { roots: [root] }));
    expect(unknown.code).toBe("model_not_found");
    expect(unknown.message).toMatch(/unknown model "llava-13b".*alpha-llava-7b/);

    // Catalogue layout without a preset.json (pulled model by model), with a non-default quantisation.
    await writeModelFolder(path.join(root, "alpha-clip-l14-336", "grit-20m"), "alpha-clip-vision", {
      "model.onnx": fakeBytes(30, 1),
    });
    const llmDir = path.join(root, "llava-v1.5-7b");
    await writeModelFolder(
      llmDir,
      "llm-gguf",
      { [MMPROJ]: fakeBytes(10, 2), "llava-v1.5-7b-Q5_K_M.gguf": fakeBytes(20, 3) },
      ["projector", "llm"],
    );
    const resolved = await resolveModelPreset("alpha-llava-7b", { roots: [root] });
    expect(resolved).toEqual({
      name: "alpha-llava-7b",
      source: "catalog",
      visionDir: path.join(root, "alpha-clip-l14-336", "grit-20m"),
      projectorPath: path.join(llmDir, MMPROJ),
      llmPath: path.join(llmDir, "llava-v1.5-7b-Q5_K_M.gguf"),
    });
    // Asking for a quantisation that is not there says how to get it.
    const missing = await failure(resolveModelPreset("alpha-llava-7b", { roots: [root], quant: "Q8_0" }));
    expect(missing.code).toBe("model_invalid");
    expect(missing.message).toMatch(
      /llava-v1\.5-7b-Q8_0\.gguf is missing.*pull alpha-llava-7b --quant Q8_0`/,
    );
    const badQuant = await failure(resolveModelPreset("alpha-llava-7b", { roots: [root], quant: "Q9" }));
    expect(badQuant.message).toMatch(/no --quant "Q9"; known: Q2_K/);
  });
});

describe("progress output", () => {
  const sample: DownloadProgress = {
    label: LLM_Q4,
    phase: "downloading",
    receivedBytes: 1_840_000_000,
    totalBytes: 4_080_000_000,
    resumedFrom: 0,
    bytesPerSecond: 52_100_000,
    etaSeconds: 43,
  };

  it("formats bytes, percentage, rate and ETA", () => {
    expect(formatProgressLine(sample)).toBe(`${LLM_Q4}   45%  1.84 GB / 4.08 GB  52.1 MB/s  ETA 43s`);
    expect(formatProgressLine(sample, 10)).toContain("[#####-----]");
    expect(formatProgressLine({ ...sample, etaSeconds: 3725, resumedFrom: 1e9 })).toMatch(
      /ETA 1h02m {2}\(resumed at 1.00 GB\)$/,
    );
  });

  function capture(isTTY: boolean) {
    let text = "";
    const stream = new Writable({
      write(chunk: Buffer, _enc, cb) {
        text += chunk.toString();
        cb();
      },
    });
    return {
      printer: createProgressPrinter(stream, { isTTY, plainIntervalMs: 60_000, columns: 120 }),
      text: () => text,
    };
  }

  it("redraws one line on a terminal and writes sparse plain lines elsewhere", () => {
    const tty = capture(true);
    tty.printer.update(sample);
    tty.printer.update({ ...sample, receivedBytes: 2_000_000_000 });
    tty.printer.log("note");
    tty.printer.update({ ...sample, phase: "done", receivedBytes: 4_080_000_000 });
    // "<EL>" stands for the erase-to-end-of-line sequence ESC [ K.
    const shown = tty.text().replaceAll(`${String.fromCharCode(27)}[K`, "<EL>");
    expect(shown).toMatch(/^\r.*45%.*<EL>\r.*49%.*<EL>\nnote\n\r.*100%.*done<EL>\n$/s);

    // A narrow terminal: no bar, a shortened name, the numbers kept whole.
    let narrow = "";
    const narrowStream = new Writable({
      write(chunk: Buffer, _enc, cb) {
        narrow += chunk.toString();
        cb();
      },
    });
    createProgressPrinter(narrowStream, { isTTY: true, columns: 60 }).update(sample);
    const line = narrow.slice(1, narrow.indexOf(String.fromCharCode(27)));
    expect(line).toMatch(/^llava-v1\.5-7b\S*~ {3}45% {2}1\.84 GB \/ 4\.08 GB {2}52\.1 MB\/s {2}ETA 43s$/);
    expect(line.length).toBeLessThanOrEqual(59);

    const plain = capture(false);
    plain.printer.update(sample);
    plain.printer.update({ ...sample, receivedBytes: 2_000_000_000 }); // within the interval: skipped
    plain.printer.update({ ...sample, phase: "done", receivedBytes: 4_080_000_000 });
    const lines = plain.text().trimEnd().split("\n");
    expect(lines).toHaveLength(2);
    expect(lines[0]).toContain("45%");
    expect(lines[1]).toMatch(/100%.*done$/);
    expect(plain.text()).not.toContain("\r");
  });
});

describe("region-vqa pull / models commands", () => {
  let host: FakeHost;
  const mmproj = fakeBytes(40_000, 21);
  const llm = fakeBytes(90_000, 22);

  beforeAll(async () => {
    host = await startFakeHost({ redirectHfToCdn: true });
    host.setFile(`${HF_DIR}/${MMPROJ}`, mmproj);
    host.setFile(`${HF_DIR}/${LLM_Q4}`, llm);
  });
  afterAll(async () => {
    await host.close();
  });

  /** The CLI in a child process (stdout/stderr are pipes, not a terminal). */
  const cli = async (args: string[], env: NodeJS.ProcessEnv) => {
    const r = await runCli(args, { env });
    return { ...r, code: r.code ?? -1 };
  };

  it("pulls with the real catalogue from a mirror, then lists it; errors exit 2 with the URL", async () => {
    const dir = await tempModelsDir();
    const env = { REGION_VQA_BASE_URL_HF: host.baseUrl, REGION_VQA_MODELS_DIR: dir };
    const pulled = await cli(["pull", "llava-v1.5-7b"], env);
    expect(pulled.stderr).not.toMatch(/region-vqa: /);
    expect(pulled.code).toBe(0);
    expect(pulled.stdout).toContain(`llava-v1.5-7b: ready in ${dir} (2 file(s) downloaded, 130 kB)`);
    expect(pulled.stdout).toMatch(/^Licence: Llama 2 Community License$/m);
    // Plain progress lines (no carriage returns) on stderr.
    expect(pulled.stderr).not.toContain("\r");
    expect(pulled.stderr).toMatch(new RegExp(`${LLM_Q4}  100%  90.0 kB / 90.0 kB  done`));
    const manifest = JSON.parse(await readFile(path.join(dir, "llava-v1.5-7b", "manifest.json"), "utf8")) as {
      files: Array<{ path: string; sha256: string }>;
    };
    expect(manifest.files.map((f) => f.sha256)).toEqual([sha256Of(mmproj), sha256Of(llm)]);

    const listed = await cli(["models", "--json"], env);
    expect(listed.code).toBe(0);
    const json = JSON.parse(listed.stdout) as { roots: string[]; models: InstalledEntry[] };
    expect(json.roots[0]).toBe(dir);
    expect(json.models.filter((m) => m.root === dir).map((m) => [m.name, m.complete])).toEqual([
      ["llava-v1.5-7b", true],
    ]);
    const table = await cli(["models"], env);
    expect(table.stdout).toMatch(
      /llava-v1\.5-7b\s+llm-gguf\s+Q4_K_M\s+130 kB\s+complete\s+Llama 2 Community License/,
    );

    const notServed = await cli(["pull", "llava-v1.5-7b", "--quant", "Q3_K_S", "--quiet"], env);
    expect(notServed.code).toBe(2);
    expect(notServed.stderr).toContain(
      `${host.baseUrl}${HF_DIR}/llava-v1.5-7b-Q3_K_S.gguf answered HTTP 404`,
    );
    expect(notServed.stderr).toContain("[download_failed]");
  });
});

afterAll(removeTempModelsDirs);
