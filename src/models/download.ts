import { createHash, type Hash } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdir, open, readFile, rename, stat, statfs, unlink, writeFile, type FileHandle } from "node:fs/promises";
import path from "node:path";
import { RegionVqaError } from "../common/errors.js";

/**
 * One file from an HTTP(S) host onto disk, the way `huggingface-cli download` and `ollama pull` do it:
 * - the bytes go to `<dest>.partial`, described by the sidecar `<dest>.partial.json` (URL, ETag,
 *   Last-Modified, expected size and sha256), so an interrupted download resumes with a Range request;
 * - a resumed answer must be `206` with a Content-Range starting where the partial file ends; a `200`
 *   (the server ignored Range, or If-Range saw a changed file) restarts from zero;
 * - size and sha256 are checked (the hash is computed while streaming) before the partial file is
 *   renamed to its final name, so a half or wrong file never sits under the final name; a file whose
 *   hash is wrong is kept aside as `<dest>.corrupt`;
 * - a dropped connection is resumed automatically a few times, then reported with the byte count.
 */
export interface DownloadProgress {
  /** Display name (the file name unless a label was given). */
  label: string;
  phase: "hashing-partial" | "downloading" | "verifying" | "done";
  /** Bytes on disk, including those resumed from an earlier run. */
  receivedBytes: number;
  totalBytes?: number;
  /** Bytes that were already on disk when this call started. */
  resumedFrom: number;
  /** Recent transfer rate (bytes per second), 0 before enough data. */
  bytesPerSecond: number;
  etaSeconds?: number;
}

/** How a file is requested: shared by whole-file downloads and ranged fetches (range-fetch.ts). */
export interface HttpTransferOptions {
  url: string;
  /** Sent only while a request stays on the URL's own origin (credentials must not follow redirects). */
  originHeaders?: Record<string, string>;
  /** What to tell the user when the host answers 401/403 (e.g. which token variable to set). */
  authHint?: string;
  signal?: AbortSignal;
  onProgress?: (progress: DownloadProgress) => void;
  /** Automatic resumptions after a dropped connection, timeout or 5xx (default 3). */
  retries?: number;
  /** First pause before a retry, doubled each time (default 1000 ms). */
  retryDelayMs?: number;
  /** Limit for the response headers of one request (default 30 s). */
  headersTimeoutMs?: number;
  /** Limit for silence while the body streams (default 60 s). */
  idleTimeoutMs?: number;
}

export interface DownloadOptions extends HttpTransferOptions {
  dest: string;
  label?: string;
  expectedBytes?: number;
  /** Lower-case hex. When absent, a sha256 the host states (X-Linked-Etag) is used if there is one. */
  expectedSha256?: string;
  /** Told about each automatic retry (why, and from which byte it resumes). */
  onRetry?: (message: string) => void;
  /** Re-hash a file already present under the final name instead of trusting its size. */
  verifyExisting?: boolean;
}

export interface DownloadResult {
  path: string;
  bytes: number;
  /** Undefined only for a file that was already present and not re-hashed. */
  sha256?: string;
  /** Where the expected sha256 came from; "none" when nothing stated one and the hash is just recorded. */
  sha256Checked: "catalog" | "host" | "none";
  skipped: boolean;
  /** Bytes already on disk when the call started (0 for a fresh download). */
  resumedFrom: number;
  /** HTTP requests made (redirect hops not counted). */
  requests: number;
}

interface PartialSidecar {
  formatVersion: 1;
  url: string;
  etag?: string;
  lastModified?: string;
  totalBytes?: number;
  expectedSha256?: string;
  updatedAt: string;
}

const MAX_REDIRECTS = 10;
const WRITE_BATCH_BYTES = 1 << 20;
const PROGRESS_INTERVAL_MS = 100;
const SHA256_HEX = /^[0-9a-f]{64}$/;

export function partialPathFor(dest: string): string {
  return `${dest}.partial`;
}
export function sidecarPathFor(dest: string): string {
  return `${dest}.partial.json`;
}
export function corruptPathFor(dest: string): string {
  return `${dest}.corrupt`;
}

export async function downloadFile(options: DownloadOptions): Promise<DownloadResult> {
  const label = options.label ?? path.basename(options.dest);
  await mkdir(path.dirname(options.dest), { recursive: true });
  const release = await takeLock(options.dest, label);
  try {
    const existing = await checkExisting(options, label);
    if (existing) return existing;
    return await downloadToPartial(options, label);
  } finally {
    await release();
  }
}

/** A file already under its final name was verified when it got there; only its size is re-checked. */
async function checkExisting(options: DownloadOptions, label: string): Promise<DownloadResult | undefined> {
  const st = await statOrUndefined(options.dest);
  if (!st) return undefined;
  if (options.expectedBytes !== undefined && st.size !== options.expectedBytes) {
    await rename(options.dest, corruptPathFor(options.dest));
    return undefined;
  }
  let sha256: string | undefined;
  if (options.verifyExisting) {
    sha256 = await hashFile(options.dest, st.size, (done) =>
      options.onProgress?.(progressOf(label, "verifying", done, st.size, 0, 0)),
    );
    if (options.expectedSha256 && sha256 !== options.expectedSha256) {
      await rename(options.dest, corruptPathFor(options.dest));
      return undefined;
    }
  }
  options.onProgress?.(progressOf(label, "done", st.size, st.size, st.size, 0));
  return {
    path: options.dest,
    bytes: st.size,
    sha256,
    sha256Checked: sha256 && options.expectedSha256 ? "catalog" : "none",
    skipped: true,
    resumedFrom: st.size,
    requests: 0,
  };
}

async function downloadToPartial(options: DownloadOptions, label: string): Promise<DownloadResult> {
  const partial = await loadPartial(options);
  const resumedFrom = partial.received;
  if (resumedFrom > 0) {
    partial.hash = await hashPrefix(partial.path, resumedFrom, (done) =>
      options.onProgress?.(progressOf(label, "hashing-partial", done, resumedFrom, resumedFrom, 0)),
    );
  }
  if (options.expectedBytes !== undefined) {
    await ensureFreeSpace(path.dirname(options.dest), options.expectedBytes - partial.received, label);
  }
  const d: DownloadState = {
    options,
    label,
    partial,
    rate: new RateMeter(),
    resumedFrom,
    totalBytes: options.expectedBytes ?? partial.sidecar?.totalBytes,
    expectedSha256: options.expectedSha256,
    sha256Checked: options.expectedSha256 ? "catalog" : "none",
    requests: 0,
  };
  await transferWithRetries(d);
  return await verifyAndInstall(d);
}

/** The bytes in `<dest>.partial`, their running sha256, and the sidecar that says what they are part of. */
interface PartialFile {
  readonly path: string;
  readonly sidecarPath: string;
  received: number;
  hash: Hash;
  sidecar: PartialSidecar | undefined;
}

/** What one download knows while it runs; each transfer updates it in place. */
interface DownloadState {
  readonly options: DownloadOptions;
  readonly label: string;
  readonly partial: PartialFile;
  readonly rate: RateMeter;
  readonly resumedFrom: number;
  totalBytes: number | undefined;
  expectedSha256: string | undefined;
  sha256Checked: DownloadResult["sha256Checked"];
  requests: number;
}

/** Picks up an earlier run's partial file, or discards it when it was for another file or size. */
async function loadPartial(options: DownloadOptions): Promise<PartialFile> {
  const sidecarPath = sidecarPathFor(options.dest);
  const sidecar = await readSidecar(sidecarPath);
  const partial: PartialFile = {
    path: partialPathFor(options.dest),
    sidecarPath,
    received: 0,
    hash: createHash("sha256"),
    sidecar,
  };
  partial.received = (await statOrUndefined(partial.path))?.size ?? 0;
  const usable =
    sidecar !== undefined &&
    (options.expectedSha256 === undefined || sidecar.expectedSha256 === options.expectedSha256) &&
    (options.expectedBytes === undefined || sidecar.totalBytes === options.expectedBytes) &&
    (sidecar.totalBytes === undefined || partial.received <= sidecar.totalBytes);
  if (!usable && (partial.received > 0 || sidecar)) await resetPartial(partial);
  return partial;
}

/** The one way a partial download is thrown away: both files go, and so does what was known of them. */
async function resetPartial(partial: PartialFile): Promise<void> {
  await unlinkIfPresent(partial.path);
  await unlinkIfPresent(partial.sidecarPath);
  partial.received = 0;
  partial.hash = createHash("sha256");
  partial.sidecar = undefined;
}

/** Transfers until the file is complete: pauses before resuming a dropped one, restarts a changed one at once. */
async function transferWithRetries(d: DownloadState): Promise<void> {
  const { options, label, partial } = d;
  const retries = options.retries ?? 3;
  let attempt = 0;
  for (;;) {
    throwIfAborted(options.signal, label, partial.received);
    d.requests++;
    const outcome = await transferOnce(d);
    if (outcome.hostSha256 && d.sha256Checked !== "catalog") {
      // The latest statement wins: after a restart for a changed file it names the new content.
      d.expectedSha256 = outcome.hostSha256;
      d.sha256Checked = "host";
    }
    if (outcome.kind === "complete") return;
    attempt++;
    if (outcome.kind === "restart") {
      // No pause: the host answered, the partial file was stale. Even `retries: 0` allows one restart.
      if (attempt > retries + 1) throw outcome.error;
      continue;
    }
    if (attempt > retries) throw outcome.error;
    options.onRetry?.(
      `${outcome.error.message.replace(/\. The partial file is kept.*$/, "")}; resuming from ` +
        `${formatBytes(partial.received)} (retry ${attempt} of ${retries})`,
    );
    await sleep((options.retryDelayMs ?? 1000) * 2 ** (attempt - 1), options.signal, label, partial.received);
  }
}

/** Checks size and sha256, then renames the partial file to its final name (a wrong hash is kept aside). */
async function verifyAndInstall(d: DownloadState): Promise<DownloadResult> {
  const { options, label, partial, totalBytes, expectedSha256, sha256Checked, resumedFrom } = d;
  const { dest, url } = options;
  const received = partial.received;
  options.onProgress?.(progressOf(label, "verifying", received, totalBytes, resumedFrom, 0));
  if (totalBytes !== undefined && received !== totalBytes) {
    await resetPartial(partial);
    throw new RegionVqaError(
      "download_failed",
      `${label}: received ${received} bytes but expected ${totalBytes}; the partial file was removed, run again`,
      { url, receivedBytes: received, totalBytes, reason: "size_mismatch" },
    );
  }
  const sha256 = partial.hash.digest("hex");
  if (expectedSha256 && sha256 !== expectedSha256) {
    const keptAs = corruptPathFor(dest);
    await rename(partial.path, keptAs);
    await unlinkIfPresent(partial.sidecarPath);
    throw new RegionVqaError(
      "checksum_mismatch",
      `${label}: sha256 ${sha256} does not match the expected ${expectedSha256} (from the ${sha256Checked}); ` +
        `the file was not installed and is kept aside as ${keptAs}`,
      { url, expected: expectedSha256, actual: sha256, keptAs },
    );
  }
  await rename(partial.path, dest);
  await unlinkIfPresent(partial.sidecarPath);
  options.onProgress?.(progressOf(label, "done", received, received, resumedFrom, d.rate.bytesPerSecond()));
  return {
    path: dest,
    bytes: received,
    sha256,
    sha256Checked,
    skipped: false,
    resumedFrom,
    requests: d.requests,
  };
}

type TransferOutcome = { hostSha256?: string } & (
  | { kind: "complete" }
  /** Worth another try after a pause (dropped connection, timeout, 5xx). */
  | { kind: "retry"; error: RegionVqaError }
  /** The partial file was discarded; try again at once from zero. */
  | { kind: "restart"; error: RegionVqaError }
);

/** A response that made it past the redirects, with what the hops stated about the file. */
interface HostAnswer {
  response: Response;
  hostSha256?: string;
  hostSize?: number;
}

/** One GET (following redirects) that appends to the partial file. Never throws for retryable faults. */
async function transferOnce(d: DownloadState): Promise<TransferOutcome> {
  const watch = new TransferWatch(d.options.signal, d.options.headersTimeoutMs ?? 30_000);
  let file: FileHandle | undefined;
  try {
    const answer = await sendRequest(d, watch);
    if ("kind" in answer) return answer;
    const accepted = await checkResponse(d, answer);
    if ("kind" in accepted) return accepted;
    await writeSidecar(d, answer.response, answer.hostSha256);
    file = await open(d.partial.path, accepted.start === 0 ? "w" : "a");
    return await streamBody(d, answer, file, watch);
  } finally {
    watch.dispose();
    await file?.close();
  }
}

/**
 * One AbortController per request, fired by the caller's signal or by a timer: first the limit for the
 * headers, then (re-armed per chunk) the limit for silence. Remembers which timer fired, for the message.
 */
export class TransferWatch {
  readonly controller = new AbortController();
  timedOut: "headers" | "idle" | undefined;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private readonly userSignal: AbortSignal | undefined;
  private readonly onUserAbort = () => this.controller.abort(this.userSignal?.reason);

  constructor(userSignal: AbortSignal | undefined, headersTimeoutMs: number) {
    this.userSignal = userSignal;
    userSignal?.addEventListener("abort", this.onUserAbort, { once: true });
    this.arm("headers", headersTimeoutMs);
  }

  arm(kind: "headers" | "idle", ms: number): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timedOut = kind;
      this.controller.abort();
    }, ms);
  }

  dispose(): void {
    clearTimeout(this.timer);
    this.userSignal?.removeEventListener("abort", this.onUserAbort);
  }
}

/** Step 1a: the GET, asking for the rest of the partial file; network faults become retry outcomes. */
async function sendRequest(d: DownloadState, watch: TransferWatch): Promise<HostAnswer | TransferOutcome> {
  const { options, label, partial } = d;
  const headers: Record<string, string> = { "accept-encoding": "identity" };
  if (partial.received > 0) {
    headers.range = `bytes=${partial.received}-`;
    // A weak ETag may not be used with If-Range; Last-Modified is the fallback validator.
    const sidecar = partial.sidecar;
    const validator = sidecar?.etag && !sidecar.etag.startsWith("W/") ? sidecar.etag : sidecar?.lastModified;
    if (validator && !knownSha256(d)) headers["if-range"] = validator;
  }
  try {
    const resumingSha256 = partial.received > 0 ? partial.sidecar?.expectedSha256 : undefined;
    return await getFollowingRedirects(options.url, headers, options, watch.controller.signal, resumingSha256);
  } catch (err) {
    if (options.signal?.aborted) throw abortedError(label, partial.received);
    const classified = classifyNetworkError(
      err,
      options.url,
      label,
      partial.received,
      d.totalBytes,
      watch.timedOut,
    );
    if (classified.retryable) return { kind: "retry", error: classified.error };
    throw classified.error;
  }
}

/**
 * When the file's sha256 is known (catalogue, or stated by the host), that hash is its identity: the
 * final check catches any mix, and a host-stated hash that changed is seen on the redirect. Only
 * without one do the CDN's ETag / Last-Modified guard the resumption (If-Range), because signed CDN
 * URLs may give the same bytes another ETag and would make every resumption start over.
 */
function knownSha256(d: DownloadState): string | undefined {
  return d.expectedSha256 ?? d.partial.sidecar?.expectedSha256;
}

/**
 * Step 1b: decides what the response means. Returns where its body starts in the file, or the outcome
 * when there is no body to take (complete, restart from zero, retry); throws for faults a retry won't fix.
 */
async function checkResponse(d: DownloadState, answer: HostAnswer): Promise<{ start: number } | TransferOutcome> {
  const refused = await checkStatus(d, answer);
  if (refused) return refused;
  const range = await checkRange(d, answer.response);
  if ("kind" in range) return range;
  const { options, label } = d;
  const { response } = answer;
  const total = range.total ?? answer.hostSize;
  if (options.expectedBytes !== undefined && total !== undefined && total !== options.expectedBytes) {
    await response.body?.cancel().catch(() => undefined);
    throw new RegionVqaError(
      "checksum_mismatch",
      `${label}: ${options.url} offers ${total} bytes but ${options.expectedBytes} are expected; refusing a different file`,
      { url: options.url, expectedBytes: options.expectedBytes, offeredBytes: total },
    );
  }
  d.totalBytes = total ?? d.totalBytes;
  if (d.totalBytes !== undefined) {
    await ensureFreeSpace(path.dirname(d.partial.path), d.totalBytes - range.start, label);
  }
  return { start: range.start };
}

/** The status and the host's stated hash: anything but a usable 200/206 ends this transfer here. */
async function checkStatus(d: DownloadState, answer: HostAnswer): Promise<TransferOutcome | undefined> {
  const { options, label, partial } = d;
  const { response, hostSha256 } = answer;
  const { url } = options;
  const status = response.status;
  const resumedSha256 = partial.sidecar?.expectedSha256;
  if (partial.received > 0 && hostSha256 && resumedSha256 && hostSha256 !== resumedSha256) {
    // The host now states another hash: the file changed since the partial download began.
    await response.body?.cancel().catch(() => undefined);
    await resetPartial(partial);
    return {
      kind: "restart",
      error: new RegionVqaError("download_failed", `${label} changed on the server while it was downloaded`, {
        url,
        reason: "changed",
      }),
    };
  }
  if (status === 416 && partial.received > 0 && d.totalBytes !== undefined && partial.received === d.totalBytes) {
    // Every byte is already in the partial file (a run stopped before installing it): nothing to send.
    await response.body?.cancel();
    return { kind: "complete", hostSha256 };
  }
  if (status === 200 || status === 206) return undefined;
  await response.body?.cancel().catch(() => undefined);
  if (status === 416) {
    await resetPartial(partial);
    return { kind: "restart", error: httpError(status, url, label, options.authHint) };
  }
  const error = httpError(status, url, label, options.authHint);
  if (status >= 500 || status === 429 || status === 408) return { kind: "retry", error };
  throw error;
}

/**
 * A 206 must continue the partial file exactly (else it is discarded and the download restarts); a 200
 * is the whole file, so the bytes already held no longer count.
 */
async function checkRange(
  d: DownloadState,
  response: Response,
): Promise<{ start: number; total: number | undefined } | TransferOutcome> {
  const { options, label, partial } = d;
  if (response.status !== 206) {
    const length = Number(response.headers.get("content-length") ?? NaN);
    if (partial.received > 0) {
      // No Range support, or If-Range saw a changed file. The file on disk is truncated when it is
      // opened for writing; until then it stays, so a refusal below still leaves it to resume later.
      partial.received = 0;
      partial.hash = createHash("sha256");
    }
    return { start: 0, total: Number.isFinite(length) ? length : undefined };
  }
  const range = parseContentRange(response.headers.get("content-range"));
  const etag = response.headers.get("etag") ?? undefined;
  const sidecarEtag = partial.sidecar?.etag;
  const changed = !knownSha256(d) && sidecarEtag !== undefined && etag !== undefined && etag !== sidecarEtag;
  const continues =
    range !== undefined &&
    range.start === partial.received &&
    !changed &&
    (d.totalBytes === undefined || range.total === d.totalBytes);
  if (continues) return { start: range.start, total: range.total };
  // Not the continuation we asked for: throw the partial file away and start over.
  const why = range
    ? `bytes ${range.start}-${range.end}/${range.total ?? "*"} for a request from byte ${partial.received}`
    : `an unreadable Content-Range`;
  await response.body?.cancel().catch(() => undefined);
  await resetPartial(partial);
  return {
    kind: "restart",
    error: new RegionVqaError("download_failed", `${label}: the server answered ${why} (${options.url})`, {
      url: options.url,
      reason: "bad_range",
    }),
  };
}

/** Records what the partial file is about to hold, so a later run can tell whether to resume it. */
async function writeSidecar(d: DownloadState, response: Response, hostSha256: string | undefined): Promise<void> {
  d.partial.sidecar = {
    formatVersion: 1,
    url: d.options.url,
    etag: response.headers.get("etag") ?? undefined,
    lastModified: response.headers.get("last-modified") ?? undefined,
    totalBytes: d.totalBytes,
    expectedSha256: d.expectedSha256 ?? hostSha256,
    updatedAt: new Date().toISOString(),
  };
  await writeFile(d.partial.sidecarPath, JSON.stringify(d.partial.sidecar, null, 2));
}

/**
 * Step 2: streams the body into the open partial file, hashing as it goes, in batched writes, with the
 * idle timeout re-armed per chunk and progress at most every PROGRESS_INTERVAL_MS.
 */
async function streamBody(
  d: DownloadState,
  answer: HostAnswer,
  file: FileHandle,
  watch: TransferWatch,
): Promise<TransferOutcome> {
  const { options, label, partial, rate, resumedFrom } = d;
  const { response, hostSha256 } = answer;
  const { url } = options;
  if (!response.body) return { kind: "complete", hostSha256 };
  const reader = response.body.getReader();
  const pending: Uint8Array[] = [];
  let pendingBytes = 0;
  const flush = async () => {
    if (pendingBytes === 0) return;
    const chunk = pending.length === 1 ? pending[0] : Buffer.concat(pending, pendingBytes);
    pending.length = 0;
    pendingBytes = 0;
    await writeAll(file, chunk, label, partial.received, url);
  };
  const idleTimeoutMs = options.idleTimeoutMs ?? 60_000;
  const report = () =>
    options.onProgress?.(
      progressOf(label, "downloading", partial.received, d.totalBytes, resumedFrom, rate.bytesPerSecond()),
    );
  let lastReport = 0;
  watch.arm("idle", idleTimeoutMs);
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      watch.arm("idle", idleTimeoutMs);
      partial.hash.update(value);
      partial.received += value.byteLength;
      rate.add(value.byteLength);
      pending.push(value);
      pendingBytes += value.byteLength;
      if (pendingBytes >= WRITE_BATCH_BYTES) await flush();
      const now = Date.now();
      if (now - lastReport >= PROGRESS_INTERVAL_MS) {
        lastReport = now;
        report();
      }
    }
  } catch (err) {
    // The bytes that did arrive are good: keep them for the resumption.
    await flush();
    if (options.signal?.aborted) throw abortedError(label, partial.received);
    const classified = classifyNetworkError(err, url, label, partial.received, d.totalBytes, watch.timedOut);
    if (classified.retryable) return { kind: "retry", error: classified.error, hostSha256 };
    throw classified.error;
  }
  await flush();
  report();
  if (d.totalBytes !== undefined && partial.received < d.totalBytes) {
    return {
      kind: "retry",
      hostSha256,
      error: droppedError(url, label, partial.received, d.totalBytes, "the server ended the response early"),
    };
  }
  await file.sync();
  return { kind: "complete", hostSha256 };
}

/**
 * GET with redirects followed by hand: credentials stay on the first origin, and the size/sha256 a
 * host states on a redirect are kept. When `stopUnlessSha256` is given and a hop states another
 * sha256, that hop's response is returned without following it (the file changed; no CDN request).
 */
export async function getFollowingRedirects(
  url: string,
  headers: Record<string, string>,
  options: Pick<DownloadOptions, "originHeaders">,
  signal: AbortSignal,
  stopUnlessSha256?: string,
): Promise<{ response: Response; hostSha256?: string; hostSize?: number }> {
  const origin = new URL(url).origin;
  let current = url;
  let hostSha256: string | undefined;
  let hostSize: number | undefined;
  for (let hop = 0; hop <= MAX_REDIRECTS; hop++) {
    const sameOrigin = new URL(current).origin === origin;
    const response = await fetch(current, {
      headers: sameOrigin ? { ...headers, ...options.originHeaders } : headers,
      redirect: "manual",
      signal,
    });
    // Hugging Face states the LFS file's sha256 and size on the redirect (what huggingface_hub uses).
    const linkedEtag = normaliseEtag(response.headers.get("x-linked-etag"));
    if (linkedEtag && SHA256_HEX.test(linkedEtag)) hostSha256 = linkedEtag;
    const linkedSize = Number(response.headers.get("x-linked-size") ?? NaN);
    if (Number.isFinite(linkedSize)) hostSize = linkedSize;
    const location = response.headers.get("location");
    if (stopUnlessSha256 && hostSha256 && hostSha256 !== stopUnlessSha256) {
      await response.body?.cancel().catch(() => undefined);
      return { response, hostSha256, hostSize };
    }
    if (response.status >= 300 && response.status < 400 && location) {
      await response.body?.cancel().catch(() => undefined);
      current = new URL(location, current).toString();
      continue;
    }
    return { response, hostSha256, hostSize };
  }
  throw new RegionVqaError("download_failed", `more than ${MAX_REDIRECTS} redirects from ${url}`, {
    url,
    reason: "redirects",
  });
}

function normaliseEtag(value: string | null): string | undefined {
  return value?.replace(/^W\//, "").replace(/"/g, "").toLowerCase();
}

export function parseContentRange(
  value: string | null,
): { start: number; end: number; total: number | undefined } | undefined {
  const m = value?.match(/^bytes (\d+)-(\d+)\/(\d+|\*)$/);
  if (!m) return undefined;
  return { start: Number(m[1]), end: Number(m[2]), total: m[3] === "*" ? undefined : Number(m[3]) };
}

export function httpError(status: number, url: string, label: string, authHint?: string): RegionVqaError {
  let hint = "";
  if (status === 404) hint = " (wrong file name, or a mirror that lacks the file?)";
  else if (status === 401 || status === 403)
    hint = ` (${authHint ?? "the host refused access: check the mirror's credentials"})`;
  const reason = status === 404 ? "not_found" : status === 401 || status === 403 ? "unauthorized" : "http";
  return new RegionVqaError("download_failed", `${label}: ${url} answered HTTP ${status}${hint}`, {
    url,
    status,
    reason,
  });
}

function droppedError(url: string, label: string, received: number, total: number | undefined, why: string) {
  return new RegionVqaError(
    "download_failed",
    `${label}: ${why} after ${formatBytes(received)}${total !== undefined ? ` of ${formatBytes(total)}` : ""} ` +
      `(${url}). The partial file is kept: run the same command again to resume.`,
    { url, receivedBytes: received, totalBytes: total, reason: "dropped" },
  );
}

export function abortedError(label: string, received: number): RegionVqaError {
  return new RegionVqaError(
    "aborted",
    `${label}: download interrupted after ${formatBytes(received)}; run the same command again to resume`,
    { receivedBytes: received },
  );
}

function errorCode(err: unknown): string | undefined {
  for (let e = err as { code?: unknown; cause?: unknown } | undefined, i = 0; e && i < 5; i++) {
    if (typeof e.code === "string") return e.code;
    e = e.cause as typeof e;
  }
  return undefined;
}

export function classifyNetworkError(
  err: unknown,
  url: string,
  label: string,
  received: number,
  total: number | undefined,
  timedOut: "headers" | "idle" | undefined,
): { retryable: boolean; error: RegionVqaError } {
  if (err instanceof RegionVqaError) return { retryable: false, error: err };
  const u = new URL(url);
  if (timedOut) {
    const why = timedOut === "headers" ? "no response from the server in time" : "the transfer stalled";
    return { retryable: true, error: droppedError(url, label, received, total, why) };
  }
  const code = errorCode(err);
  if (code === "ENOTFOUND" || code === "EAI_AGAIN") {
    return {
      retryable: false,
      error: new RegionVqaError(
        "download_failed",
        `${label}: cannot resolve ${u.hostname} (no network, or a wrong mirror URL?) for ${url}`,
        { url, reason: "dns", cause: code },
      ),
    };
  }
  if (code === "ECONNREFUSED" || code === "EHOSTUNREACH" || code === "ENETUNREACH") {
    return {
      retryable: false,
      error: new RegionVqaError(
        "download_failed",
        `${label}: cannot connect to ${u.host} (${code}: no network, or the server is down) for ${url}`,
        { url, reason: "unreachable", cause: code },
      ),
    };
  }
  return {
    retryable: true,
    error: droppedError(url, label, received, total, `the connection dropped (${code ?? describe(err)})`),
  };
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

async function writeAll(file: FileHandle, chunk: Uint8Array, label: string, received: number, url: string) {
  try {
    let offset = 0;
    while (offset < chunk.byteLength) {
      const { bytesWritten } = await file.write(chunk, offset, chunk.byteLength - offset);
      offset += bytesWritten;
    }
  } catch (err) {
    throw diskError(err, label, received, url);
  }
}

export function diskError(err: unknown, label: string, received: number, url: string): RegionVqaError {
  const code = errorCode(err);
  if (code === "ENOSPC" || code === "EDQUOT") {
    return new RegionVqaError(
      "download_failed",
      `${label}: the disk is full (${code}) after ${formatBytes(received)}; free some space and run the ` +
        `same command again to resume (or pull into another folder with --dir)`,
      { url, reason: "disk_full", receivedBytes: received },
    );
  }
  return new RegionVqaError("download_failed", `${label}: cannot write the file: ${describe(err)}`, {
    url,
    reason: "write",
    cause: code,
  });
}

export async function ensureFreeSpace(dir: string, needed: number, label: string): Promise<void> {
  const fsStat = await statfs(dir).catch(() => undefined);
  if (!fsStat) return;
  const free = fsStat.bavail * fsStat.bsize;
  if (needed > free) {
    throw new RegionVqaError(
      "download_failed",
      `${label}: not enough disk space in ${dir}: ${formatBytes(needed)} needed, ${formatBytes(free)} free ` +
        `(ENOSPC); free some space or pull into another folder with --dir`,
      { reason: "disk_full", neededBytes: needed, freeBytes: free },
    );
  }
}

export async function takeLock(dest: string, label: string): Promise<() => Promise<void>> {
  const lockPath = `${dest}.lock`;
  for (let tries = 0; tries < 2; tries++) {
    try {
      await writeFile(lockPath, String(process.pid), { flag: "wx" });
      return () => unlinkIfPresent(lockPath);
    } catch (err) {
      if (errorCode(err) !== "EEXIST") throw diskError(err, label, 0, "");
      const pid = Number((await readFile(lockPath, "utf8").catch(() => "")).trim());
      if (Number.isInteger(pid) && pid > 0 && processAlive(pid)) {
        throw new RegionVqaError(
          "download_failed",
          `${label} is being downloaded by another region-vqa process (pid ${pid}); wait for it, or remove ` +
            `${lockPath} if that process is not region-vqa`,
          { reason: "locked", pid },
        );
      }
      // A lock left by a process that died: take it over.
      await unlinkIfPresent(lockPath);
    }
  }
  throw new RegionVqaError("download_failed", `${label}: cannot take the lock ${lockPath}`, { reason: "locked" });
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return errorCode(err) === "EPERM";
  }
}

async function readSidecar(file: string): Promise<PartialSidecar | undefined> {
  try {
    const parsed = JSON.parse(await readFile(file, "utf8")) as PartialSidecar;
    return parsed.formatVersion === 1 ? parsed : undefined;
  } catch {
    return undefined;
  }
}

async function unlinkIfPresent(file: string): Promise<void> {
  await unlink(file).catch((err) => {
    if (errorCode(err) !== "ENOENT") throw err;
  });
}

async function statOrUndefined(file: string) {
  return stat(file).catch(() => undefined);
}

/** Streams a file through sha256 (a large model is never read into memory at once). */
export async function hashFile(file: string, size: number, onBytes?: (done: number) => void): Promise<string> {
  return (await hashPrefix(file, size, onBytes)).digest("hex");
}

async function hashPrefix(file: string, bytes: number, onBytes?: (done: number) => void): Promise<Hash> {
  const hash = createHash("sha256");
  if (bytes === 0) return hash;
  let done = 0;
  let lastReport = 0;
  for await (const chunk of createReadStream(file, { start: 0, end: bytes - 1, highWaterMark: 1 << 20 })) {
    hash.update(chunk as Buffer);
    done += (chunk as Buffer).byteLength;
    const now = Date.now();
    if (onBytes && now - lastReport >= PROGRESS_INTERVAL_MS) {
      lastReport = now;
      onBytes(done);
    }
  }
  return hash;
}

function throwIfAborted(signal: AbortSignal | undefined, label: string, received: number) {
  if (signal?.aborted) throw abortedError(label, received);
}

export function sleep(ms: number, signal: AbortSignal | undefined, label: string, received: number): Promise<void> {
  return new Promise((resolve, reject) => {
    if (ms <= 0) return resolve();
    const onAbort = () => {
      clearTimeout(timer);
      reject(abortedError(label, received));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

export function progressOf(
  label: string,
  phase: DownloadProgress["phase"],
  receivedBytes: number,
  totalBytes: number | undefined,
  resumedFrom: number,
  bytesPerSecond: number,
): DownloadProgress {
  const etaSeconds =
    totalBytes !== undefined && bytesPerSecond > 0 ? (totalBytes - receivedBytes) / bytesPerSecond : undefined;
  return { label, phase, receivedBytes, totalBytes, resumedFrom, bytesPerSecond, etaSeconds };
}

/** Transfer rate over the last few seconds, so a stall shows quickly and a burst does not linger. */
export class RateMeter {
  private samples: Array<{ t: number; bytes: number }> = [];
  private static readonly WINDOW_MS = 5000;

  add(bytes: number): void {
    const t = Date.now();
    this.samples.push({ t, bytes });
    while (this.samples.length > 1 && t - this.samples[0].t > RateMeter.WINDOW_MS) this.samples.shift();
  }

  bytesPerSecond(): number {
    if (this.samples.length < 2) return 0;
    const span = (this.samples[this.samples.length - 1].t - this.samples[0].t) / 1000;
    if (span <= 0) return 0;
    const bytes = this.samples.slice(1).reduce((sum, s) => sum + s.bytes, 0);
    return bytes / span;
  }
}

export function formatBytes(n: number): string {
  if (n < 1000) return `${n} B`;
  const units = ["kB", "MB", "GB", "TB"];
  let v = n;
  let i = -1;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i++;
  }
  return `${v.toFixed(v >= 100 ? 0 : v >= 10 ? 1 : 2)} ${units[i]}`;
}
