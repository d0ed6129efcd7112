import { existsSync } from "node:fs";
import { readFile, stat, symlink, writeFile } from "node:fs/promises";
import path from "node:path";
import { afterAll, afterEach, beforeEach, describe, expect, it } from "vitest";
import { RegionVqaError } from "../src/common/errors.js";
import {
  corruptPathFor,
  downloadFile,
  partialPathFor,
  pullModel,
  sidecarPathFor,
  type DownloadProgress,
} from "../src/models/index.js";
import { fakeBytes, sha256Of, startFakeHost, type FakeHost } from "./support/pull-fakehost.js";
import {
  catalogWith,
  failure,
  HF_DIR,
  LLM_Q4,
  MMPROJ,
  removeTempModelsDirs,
  tempModelsDir,
} from "./support/pull-helpers.js";

const FILE_PATH = `${HF_DIR}/${LLM_Q4}`;

describe("resumable downloads against a loopback host", () => {
  let host: FakeHost;
  let dir: string;
  const body = fakeBytes(300_000, 11);

  beforeEach(async () => {
    host = await startFakeHost();
    host.setFile(FILE_PATH, body);
    dir = await tempModelsDir();
  });
  afterEach(async () => {
    await host.close();
  });

  const dest = () => path.join(dir, LLM_Q4);
  const totalSent = () => host.bytesSent.get(FILE_PATH) ?? 0;

  it("resumes an interrupted download from where it stopped with a Range request", async () => {
    host.misbehave(FILE_PATH, { kind: "drop", afterBytes: 120_000 });
    const catalog = catalogWith({ [LLM_Q4]: body, [MMPROJ]: fakeBytes(5000, 3) });
    host.setFile(`${HF_DIR}/${MMPROJ}`, fakeBytes(5000, 3));
    const options = { catalog, modelsDir: dir, baseUrls: { huggingface: host.baseUrl }, retryDelayMs: 0 };

    // No automatic retry: the drop surfaces as it would when the process is killed mid-download.
    const first = await pullModel("llava-v1.5-7b", { ...options, retries: 0 }).catch((e: unknown) => e);
    expect(first).toBeInstanceOf(RegionVqaError);
    expect((first as RegionVqaError).code).toBe("download_failed");
    expect((first as RegionVqaError).message).toMatch(
      /connection dropped.* of 300 kB.*run the same command again/s,
    );
    const partialDest = path.join(dir, "llava-v1.5-7b", LLM_Q4);
    // Bytes still in flight when the socket died may be lost on the client side (normally none are).
    const kept = (await stat(partialPathFor(partialDest))).size;
    expect(kept).toBeGreaterThan(0);
    expect(kept).toBeLessThanOrEqual(120_000);
    expect((first as RegionVqaError).details?.receivedBytes).toBe(kept);
    expect(existsSync(partialDest)).toBe(false);

    const result = await pullModel("llava-v1.5-7b", { ...options, retries: 0 });
    const llmRequests = host.requests.filter((r) => r.path === FILE_PATH);
    expect(llmRequests).toHaveLength(2);
    expect(llmRequests[0].range).toBeUndefined();
    expect(llmRequests[1].range).toBe(`bytes=${kept}-`);
    // The catalogue's sha256 identifies the file, so no If-Range (CDN ETags need not be stable).
    expect(llmRequests[1].ifRange).toBeUndefined();
    expect(llmRequests[1].status).toBe(206);
    // Nothing the client had kept was sent twice: total = first response + the rest.
    expect(totalSent()).toBe(120_000 + body.length - kept);
    const pulled = result.files.find((f) => f.file === LLM_Q4)!;
    expect(pulled.resumedFrom).toBe(kept);
    expect((await readFile(partialDest)).equals(body)).toBe(true);
    expect(existsSync(partialPathFor(partialDest))).toBe(false);
    expect(existsSync(sidecarPathFor(partialDest))).toBe(false);
  });

  it("resumes automatically within one call after a dropped connection", async () => {
    host.misbehave(FILE_PATH, { kind: "drop", afterBytes: 50_000 }, { kind: "drop", afterBytes: 70_000 });
    const progress: DownloadProgress[] = [];
    const retries: string[] = [];
    const r = await downloadFile({
      onRetry: (m) => retries.push(m),
      url: host.baseUrl + FILE_PATH,
      dest: dest(),
      expectedSha256: sha256Of(body),
      retries: 3,
      retryDelayMs: 0,
      onProgress: (p) => progress.push(p),
    });
    expect(r.requests).toBe(3);
    expect(retries).toHaveLength(2);
    expect(retries[0]).toMatch(
      /connection dropped .* of 300 kB \(http:.*\); resuming from [\d.]+ kB \(retry 1 of 3\)$/,
    );
    expect(r.sha256).toBe(sha256Of(body));
    const starts = host.requests.map((q) => Number(/^bytes=(\d+)-$/.exec(q.range ?? "")?.[1] ?? 0));
    expect(starts[0]).toBe(0);
    expect(starts[1]).toBeGreaterThan(0);
    expect(starts[2]).toBeGreaterThan(starts[1]);
    // Only bytes lost in flight are sent twice (normally none: starts = [0, 50000, 120000]).
    expect(totalSent()).toBe(body.length + (50_000 - starts[1]) + (starts[1] + 70_000 - starts[2]));
    expect((await readFile(dest())).equals(body)).toBe(true);
    expect(progress.at(-1)).toMatchObject({
      phase: "done",
      receivedBytes: body.length,
      totalBytes: body.length,
    });
  });

  it("reports a connection that keeps dropping, keeping the partial file", async () => {
    host.misbehave(
      FILE_PATH,
      ...Array.from({ length: 3 }, () => ({ kind: "drop" as const, afterBytes: 10_000 })),
    );
    const err = await failure(
      downloadFile({
        url: host.baseUrl + FILE_PATH,
        dest: dest(),
        retries: 2,
        retryDelayMs: 0,
      }),
    );
    expect(err).toBeInstanceOf(RegionVqaError);
    expect(err.code).toBe("download_failed");
    expect(err.details?.reason).toBe("dropped");
    expect(err.message).toMatch(/connection dropped \(.*\) after [\d.]+ kB of 300 kB/);
    expect(err.message).toContain(host.baseUrl + FILE_PATH);
    const kept = (await stat(partialPathFor(dest()))).size;
    expect(err.details?.receivedBytes).toBe(kept);
    expect(kept).toBeGreaterThan(0);
    expect(kept).toBeLessThanOrEqual(30_000);
    expect(existsSync(dest())).toBe(false);
  });

  it("restarts cleanly when the server ignores the Range header (200)", async () => {
    host.misbehave(FILE_PATH, { kind: "drop", afterBytes: 40_000 }, { kind: "ignore-range" });
    const r = await downloadFile({
      url: host.baseUrl + FILE_PATH,
      dest: dest(),
      retries: 1,
      retryDelayMs: 0,
    });
    expect(host.requests[1].range).toMatch(/^bytes=\d+-$/);
    expect(host.requests[1].status).toBe(200);
    expect(r.sha256).toBe(sha256Of(body));
    expect((await readFile(dest())).equals(body)).toBe(true);
  });

  it("starts over when the file changed on the server (If-Range mismatch)", async () => {
    host.misbehave(FILE_PATH, { kind: "drop", afterBytes: 40_000 });
    await expect(downloadFile({ url: host.baseUrl + FILE_PATH, dest: dest(), retries: 0 })).rejects.toThrow(
      /dropped/,
    );
    const changed = fakeBytes(250_000, 99);
    host.setFile(FILE_PATH, changed);
    const r = await downloadFile({ url: host.baseUrl + FILE_PATH, dest: dest(), retries: 0 });
    expect(host.requests[1].ifRange).toBeDefined();
    expect(host.requests[1].status).toBe(200);
    expect(r.bytes).toBe(changed.length);
    expect((await readFile(dest())).equals(changed)).toBe(true);
  });

  it("resumes behind a Hugging Face-style redirect even when the CDN's ETag changed", async () => {
    const hf = await startFakeHost({ redirectHfToCdn: true });
    try {
      hf.setFile(FILE_PATH, body);
      hf.misbehave(FILE_PATH, { kind: "drop", afterBytes: 100_000 });
      const options = { url: hf.baseUrl + FILE_PATH, dest: dest(), retries: 0 };
      await expect(downloadFile(options)).rejects.toThrow(/dropped/);
      hf.setFile(FILE_PATH, body); // same bytes, new ETag (as another signed CDN URL may give)
      const r = await downloadFile(options);
      const cdn = hf.requests.filter((q) => q.server === "cdn");
      expect(cdn[1].range).toMatch(/^bytes=[1-9]\d*-$/);
      expect(cdn[1].ifRange).toBeUndefined();
      expect(cdn[1].status).toBe(206);
      expect(r.resumedFrom).toBeGreaterThan(0);
      expect(r.sha256Checked).toBe("host");
      expect((await readFile(dest())).equals(body)).toBe(true);
    } finally {
      await hf.close();
    }
  });

  it("starts over when the hash the host states changed since the partial download began", async () => {
    const hf = await startFakeHost({ redirectHfToCdn: true });
    try {
      hf.setFile(FILE_PATH, body);
      hf.misbehave(FILE_PATH, { kind: "drop", afterBytes: 100_000 });
      const options = { url: hf.baseUrl + FILE_PATH, dest: dest(), retries: 2, retryDelayMs: 0 };
      await expect(downloadFile({ ...options, retries: 0 })).rejects.toThrow(/dropped/);
      const changed = fakeBytes(280_000, 5);
      hf.setFile(FILE_PATH, changed);
      const r = await downloadFile(options);
      expect(r.resumedFrom).toBeGreaterThan(0);
      expect(r.sha256).toBe(sha256Of(changed));
      expect((await readFile(dest())).equals(changed)).toBe(true);
      const cdn = hf.requests.filter((q) => q.server === "cdn");
      expect(cdn.map((q) => q.range?.replace(/\d+/, "N"))).toEqual([undefined, undefined]);
    } finally {
      await hf.close();
    }
  });

  it("rejects a 206 whose Content-Range does not start where the partial file ends", async () => {
    host.misbehave(FILE_PATH, { kind: "drop", afterBytes: 40_000 }, { kind: "wrong-range" });
    const r = await downloadFile({
      url: host.baseUrl + FILE_PATH,
      dest: dest(),
      retries: 1,
      retryDelayMs: 0,
    });
    expect(host.requests.map((q) => q.range?.replace(/\d+/, "N"))).toEqual([
      undefined,
      "bytes=N-",
      undefined,
    ]);
    expect(host.requests.map((q) => q.status)).toEqual([200, 206, 200]);
    expect((await readFile(dest())).equals(body)).toBe(true);
    expect(r.sha256).toBe(sha256Of(body));
  });

  it("resumes after the transfer stalls (idle timeout)", async () => {
    host.misbehave(FILE_PATH, { kind: "stall", afterBytes: 60_000 });
    const r = await downloadFile({
      url: host.baseUrl + FILE_PATH,
      dest: dest(),
      idleTimeoutMs: 300,
      retries: 1,
      retryDelayMs: 0,
    });
    expect(host.requests[1].range).toMatch(/^bytes=[1-9]\d*-$/);
    expect(host.requests[1].status).toBe(206);
    expect(r.resumedFrom).toBe(0);
    expect((await readFile(dest())).equals(body)).toBe(true);
  });

  it("stops at once when aborted (Ctrl-C), keeping the partial file for the next run", async () => {
    host.misbehave(FILE_PATH, { kind: "stall", afterBytes: 80_000 });
    const controller = new AbortController();
    let aborting: ReturnType<typeof setTimeout> | undefined;
    const started = Date.now();
    const err = await failure(
      downloadFile({
        url: host.baseUrl + FILE_PATH,
        dest: dest(),
        signal: controller.signal,
        // Ctrl-C a moment after the data stopped flowing (the server stalls after 80 kB).
        onProgress: () => {
          if (!aborting) aborting = setTimeout(() => controller.abort(), 300);
        },
      }),
    );
    expect(err.code).toBe("aborted");
    expect(err.message).toMatch(/interrupted after [\d.]+ kB; run the same command again to resume/);
    expect(Date.now() - started).toBeLessThan(5000);
    const kept = (await stat(partialPathFor(dest()))).size;
    expect(kept).toBeGreaterThan(0);
    expect(err.details?.receivedBytes).toBe(kept);
    expect(existsSync(`${dest()}.lock`)).toBe(false);
    const r = await downloadFile({ url: host.baseUrl + FILE_PATH, dest: dest() });
    expect(r.resumedFrom).toBe(kept);
    expect((await readFile(dest())).equals(body)).toBe(true);
  });

  it("refuses a checksum mismatch and keeps the file aside as .corrupt", async () => {
    const wrong = "0".repeat(64);
    const err = await failure(
      downloadFile({
        url: host.baseUrl + FILE_PATH,
        dest: dest(),
        expectedSha256: wrong,
      }),
    );
    expect(err.code).toBe("checksum_mismatch");
    expect(err.message).toContain(sha256Of(body));
    expect(err.message).toContain(corruptPathFor(dest()));
    expect(existsSync(dest())).toBe(false);
    expect(existsSync(partialPathFor(dest()))).toBe(false);
    expect((await readFile(corruptPathFor(dest()))).equals(body)).toBe(true);
  });

  it("refuses a file whose size differs from the catalogue's before downloading it", async () => {
    const err = await failure(
      downloadFile({
        url: host.baseUrl + FILE_PATH,
        dest: dest(),
        expectedBytes: 299_999,
      }),
    );
    expect(err.code).toBe("checksum_mismatch");
    expect(err.message).toMatch(/offers 300000 bytes but 299999 are expected/);
    expect(existsSync(partialPathFor(dest()))).toBe(false);
    expect(existsSync(dest())).toBe(false);
  });

  it("names the URL of a 404", async () => {
    const url = `${host.baseUrl}${HF_DIR}/llava-v1.5-7b-Q9_9.gguf`;
    const err = await failure(downloadFile({ url, dest: dest() }));
    expect(err.code).toBe("download_failed");
    expect(err.details).toMatchObject({ status: 404, reason: "not_found" });
    expect(err.message).toContain(url);
    expect(err.message).toContain("HTTP 404");
  });

  it("reports an unreachable host (connection refused) without retrying", async () => {
    const closed = await startFakeHost();
    const url = `${closed.baseUrl}${FILE_PATH}`;
    await closed.close();
    const started = Date.now();
    const err = await failure(downloadFile({ url, dest: dest(), retries: 3, retryDelayMs: 2000 }));
    expect(err.code).toBe("download_failed");
    expect(err.details).toMatchObject({ reason: "unreachable", cause: "ECONNREFUSED" });
    expect(err.message).toMatch(/cannot connect to 127\.0\.0\.1:\d+ \(ECONNREFUSED/);
    expect(Date.now() - started).toBeLessThan(1500);
  });

  it("reports a host name that does not resolve (no network / wrong mirror)", async () => {
    // .invalid is reserved (RFC 2606): resolvers answer NXDOMAIN without asking the network.
    const err = await failure(
      downloadFile({
        url: "http://models.example.invalid/x.gguf",
        dest: dest(),
        retries: 0,
      }),
    );
    expect(err.code).toBe("download_failed");
    expect(err.details?.reason).toBe("dns");
    expect(err.message).toContain("cannot resolve models.example.invalid");
  });

  it("reports a full disk (ENOSPC) and keeps what it had", async () => {
    // /dev/full answers every write with ENOSPC: the partial file is made a link to it, as if the disk
    // filled up at the first write. The sidecar makes the downloader keep (not delete) that file.
    await symlink("/dev/full", partialPathFor(dest()));
    await writeFile(
      sidecarPathFor(dest()),
      JSON.stringify({
        formatVersion: 1,
        url: host.baseUrl + FILE_PATH,
        updatedAt: new Date().toISOString(),
      }),
    );
    const err = await failure(downloadFile({ url: host.baseUrl + FILE_PATH, dest: dest(), retries: 2 }));
    expect(err.code).toBe("download_failed");
    expect(err.details?.reason).toBe("disk_full");
    expect(err.message).toMatch(/disk is full \(ENOSPC\)/);
    expect(host.requests).toHaveLength(1);
    expect(existsSync(dest())).toBe(false);
  });

  it("checks free space before downloading a file larger than the disk", async () => {
    const err = await failure(
      downloadFile({
        url: host.baseUrl + FILE_PATH,
        dest: dest(),
        expectedBytes: 2 ** 60,
      }),
    );
    expect(err.code).toBe("download_failed");
    expect(err.details?.reason).toBe("disk_full");
    expect(err.message).toMatch(/not enough disk space .* needed/);
    expect(host.requests).toHaveLength(0);
  });

  it("does not download a file already present under its final name", async () => {
    await downloadFile({ url: host.baseUrl + FILE_PATH, dest: dest() });
    const again = await downloadFile({
      url: host.baseUrl + FILE_PATH,
      dest: dest(),
      expectedBytes: body.length,
    });
    expect(again.skipped).toBe(true);
    expect(host.requests).toHaveLength(1);
  });

  it("refuses to download a file another live process is downloading", async () => {
    await writeFile(`${dest()}.lock`, String(process.ppid));
    const err = await failure(downloadFile({ url: host.baseUrl + FILE_PATH, dest: dest() }));
    expect(err.details?.reason).toBe("locked");
    // A lock whose process is gone is taken over.
    await writeFile(`${dest()}.lock`, "999999999");
    const r = await downloadFile({ url: host.baseUrl + FILE_PATH, dest: dest() });
    expect(r.bytes).toBe(body.length);
    expect(existsSync(`${dest()}.lock`)).toBe(false);
  });
});

afterAll(removeTempModelsDirs);
