/**
 * Fetches only some tensors of a remote checkpoint with HTTP Range requests: the text tower of a whole
 * CLIP (ViT-L/14@336's is ~247 MB of OpenAI's ~891 MB file), without the visual tower.
 *
 * The bytes go into a sparse working file of the remote file's size, each range at its own position, so
 * the ordinary synchronous checkpoint readers (ZipFile / openPytorchZip / openSafetensors) read it as if
 * it were the whole file, as long as they only touch fetched bytes:
 *
 * - zip archives (torch.save, TorchScript): the tail (end-of-central-directory record, zip64 records),
 *   the central directory, `<top>/data.pkl`; the pickle then says which storage entry each tensor uses,
 *   and the entries of the chosen tensors are fetched (local header + data, up to the next entry), in as
 *   few requests as adjacency allows. Each fetched entry's CRC-32 is checked against the central
 *   directory: with only part of the file there is no whole-file sha256 to check.
 * - safetensors: the 8-byte header length, the JSON header, then the chosen tensors' byte ranges. The
 *   format has no checksums: sizes and the header are checked, the tensor bytes are not verified.
 *
 * A host that answers a ranged request with the whole file (200), or a file in neither format, is
 * reported as `unsupported`: the caller then downloads the whole file (download.ts).
 */
import { open, rm, type FileHandle } from "node:fs/promises";
import zlib from "node:zlib";
import { RegionVqaError } from "../common/errors.js";
import {
  LOCAL_HEADER_BYTES,
  localDataOffset,
  looksLikeSafetensors,
  openStateDict,
  parseCentralDirectory,
  parseEndOfCentralDirectory,
  parseZip64EndRecord,
  ZIP64_END_RECORD_BYTES,
  ZIP_TAIL_BYTES,
  type CentralDirectoryLocation,
  type StateDict,
  type ZipEntry,
} from "../vision/checkpoint/index.js";
import {
  abortedError,
  classifyNetworkError,
  diskError,
  formatBytes,
  getFollowingRedirects,
  httpError,
  parseContentRange,
  progressOf,
  RateMeter,
  sleep,
  TransferWatch,
  type DownloadProgress,
  type HttpTransferOptions,
} from "./download.js";

/** `onProgress` reports bytes of the ranges (`totalBytes`: the bytes planned so far); `retries` resume each range. */
export interface RangeFetchOptions extends HttpTransferOptions {
  /**
   * The working file, created with the remote file's size (sparse where the file system allows it).
   * It holds only the fetched ranges: give it a name that cannot be taken for the published file.
   */
  dest: string;
  /** Display name (the published file name). */
  label: string;
  /** Exact size of the remote file, when known: another size is refused. */
  expectedBytes?: number;
  /**
   * Which tensors to fetch, given the checkpoint opened over the working file once its directory is
   * there (reading tensor data from it is not allowed at that point: only `keys`, `has`, `info`).
   */
  selectKeys: (stateDict: StateDict) => string[];
  /** Told about retries and about what is (not) verified. */
  onLog?: (message: string) => void;
}

export interface RangeFetchResult {
  kind: "ranges";
  /** The working file (the caller deletes it once done with it). */
  path: string;
  format: "zip" | "safetensors";
  /** Size of the remote file. */
  fileBytes: number;
  /** Body bytes received, retries included. */
  bytesFetched: number;
  /** HTTP requests made (redirect hops not counted). */
  requests: number;
  /** The tensors whose bytes were fetched (as the state dict names them). */
  keys: string[];
  /** The byte spans requested, [start, end), in order. */
  spans: Array<[number, number]>;
  /** Zip entries whose CRC-32 matched the central directory (0 for safetensors). */
  crcVerifiedEntries: number;
  /** What was verified, for manifests and logs: "crc32 of N zip entries" or "none". */
  verified: string;
}

export interface RangeFetchUnsupported {
  kind: "unsupported";
  /** Why the ranges could not be used (for the log line before a whole-file download). */
  reason: string;
  bytesFetched: number;
  requests: number;
}

/**
 * The first request: enough to tell a zip (local header signature) from safetensors (header length and
 * "{"), small enough not to reach past a zip's first local header into tensor data.
 */
const HEAD_BYTES = 64;
/** The first look at a zip's end: its end records (zip64 ones included), often the central directory too. */
const SHORT_TAIL_BYTES = 4096;
/** Two wanted spans closer than this are fetched as one request (the bytes between are not wanted). */
const MAX_GAP_BYTES = 64 * 1024;
const WRITE_BATCH_BYTES = 1 << 20;
const VERIFY_CHUNK_BYTES = 4 << 20;
const PROGRESS_INTERVAL_MS = 100;
/** A safetensors header longer than this is refused (the readers' own limit). */
const MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024;

/** Thrown inside this module when ranges cannot be used; becomes a `RangeFetchUnsupported` answer. */
class RangesUnsupported extends Error {}

/** Node 20.15+ has zlib.crc32; the engines field allows 20.9, so a table-driven one stands in. */
const crc32: (data: Uint8Array, value?: number) => number =
  typeof (zlib as { crc32?: unknown }).crc32 === "function" ? zlib.crc32 : crc32Table;

let CRC_TABLE: Uint32Array | undefined;
function crc32Table(data: Uint8Array, value = 0): number {
  if (!CRC_TABLE) {
    CRC_TABLE = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      CRC_TABLE[n] = c >>> 0;
    }
  }
  let c = ~value >>> 0;
  for (let i = 0; i < data.length; i++) c = CRC_TABLE[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}

/** Sorted, disjoint [start, end) spans. */
class SpanSet {
  private spans: Array<[number, number]> = [];

  add(start: number, end: number): void {
    if (end <= start) return;
    const out: Array<[number, number]> = [];
    let s = start;
    let e = end;
    for (const [a, b] of this.spans) {
      if (b < s || a > e) out.push([a, b]);
      else {
        s = Math.min(s, a);
        e = Math.max(e, b);
      }
    }
    out.push([s, e]);
    this.spans = out.sort((x, y) => x[0] - y[0]);
  }

  /** The parts of [start, end) not in the set. */
  missing(start: number, end: number): Array<[number, number]> {
    const out: Array<[number, number]> = [];
    let at = start;
    for (const [a, b] of this.spans) {
      if (b <= at) continue;
      if (a >= end) break;
      if (a > at) out.push([at, a]);
      at = Math.max(at, b);
      if (at >= end) break;
    }
    if (at < end) out.push([at, end]);
    return out;
  }

  covers(start: number, end: number): boolean {
    return this.missing(start, end).length === 0;
  }
}

/** Sorts spans and joins those that overlap or lie less than `maxGap` apart. */
export function coalesceSpans(spans: Array<[number, number]>, maxGap: number): Array<[number, number]> {
  const sorted = spans.filter(([s, e]) => e > s).sort((a, b) => a[0] - b[0]);
  const out: Array<[number, number]> = [];
  for (const [s, e] of sorted) {
    const last = out[out.length - 1];
    if (last && s - last[1] <= maxGap) last[1] = Math.max(last[1], e);
    else out.push([s, e]);
  }
  return out;
}

/** The remote file as far as it has been fetched: ranged GETs written into the sparse working file. */
class RemoteFile {
  total: number | undefined;
  private file: FileHandle | undefined;
  private etag: string | undefined;
  private hostSha256: string | undefined;
  private readonly have = new SpanSet();
  private readonly rate = new RateMeter();
  private lastReport = 0;
  readonly spans: Array<[number, number]> = [];
  requests = 0;
  bytesFetched = 0;
  private planned = 0;

  constructor(private readonly o: RangeFetchOptions) {}

  async close(): Promise<void> {
    await this.file?.close();
    this.file = undefined;
  }

  /** Fetches what is missing of the given spans, joining near neighbours into one request. */
  async ensure(wanted: Array<[number, number]>): Promise<void> {
    const clamp = (n: number) => (this.total === undefined ? n : Math.min(n, this.total));
    const missing = coalesceSpans(wanted, 0).flatMap(([s, e]) => this.have.missing(clamp(s), clamp(e)));
    for (const [s, e] of coalesceSpans(missing, MAX_GAP_BYTES)) {
      this.planned += e - s;
      this.spans.push([s, e]);
      await this.fetchSpan(s, e);
    }
  }

  /** Bytes that were fetched (refuses to read a hole of the sparse file). */
  async read(position: number, length: number): Promise<Buffer> {
    if (!this.file || !this.have.covers(position, position + length)) {
      throw new RegionVqaError("internal", `${this.o.label}: bytes ${position}-${position + length} were not fetched`);
    }
    const buf = Buffer.alloc(length);
    let done = 0;
    while (done < length) {
      const { bytesRead } = await this.file.read(buf, done, length - done, position + done);
      if (bytesRead === 0) throw new RegionVqaError("internal", `${this.o.label}: the working file is short`);
      done += bytesRead;
    }
    return buf;
  }

  /** CRC-32 of fetched bytes, read back from the working file in chunks. */
  async crc32Of(position: number, length: number): Promise<number> {
    let crc = 0;
    for (let at = 0; at < length; at += VERIFY_CHUNK_BYTES) {
      crc = crc32(await this.read(position + at, Math.min(VERIFY_CHUNK_BYTES, length - at)), crc);
    }
    return crc;
  }

  async sync(): Promise<void> {
    await this.file?.sync();
  }

  /** One span, resumed from where it stopped after a dropped connection, up to `retries` times. */
  private async fetchSpan(start: number, end: number): Promise<void> {
    const retries = this.o.retries ?? 3;
    let at = start;
    let attempt = 0;
    // The first request learns the file's size: a span asked for past the end stops there.
    while (at < Math.min(end, this.total ?? end)) {
      if (this.o.signal?.aborted) throw abortedError(this.o.label, this.bytesFetched);
      this.requests++;
      const outcome = await this.requestOnce(at, end);
      if (outcome.reached > at) attempt = 0;
      at = outcome.reached;
      // The host may send less than asked for (a shorter file, or a server's own limit): ask again.
      if (!outcome.error) continue;
      attempt++;
      if (attempt > retries) {
        throw new RegionVqaError(
          "download_failed",
          `${outcome.error.message.replace(/\. The partial file is kept.*$/, "")} while fetching bytes ` +
            `${start}-${end - 1} (${retries} retries); the fetched ranges were discarded: run the same ` +
            `command again, or pass --whole-file`,
          { ...outcome.error.details, url: this.o.url, range: [start, end] },
        );
      }
      this.o.onLog?.(
        `${outcome.error.message.replace(/\. The partial file is kept.*$/, "")}; resuming the range at byte ${at} ` +
          `(retry ${attempt} of ${retries})`,
      );
      await sleep((this.o.retryDelayMs ?? 1000) * 2 ** (attempt - 1), this.o.signal, this.o.label, this.bytesFetched);
    }
  }

  /**
   * One ranged GET for [at, end). Returns the position reached, with the error to retry on when the
   * transfer failed in a way a retry may fix; throws for anything else.
   */
  private async requestOnce(at: number, end: number): Promise<{ reached: number; error?: RegionVqaError }> {
    const { o } = this;
    const watch = new TransferWatch(o.signal, o.headersTimeoutMs ?? 30_000);
    const classify = (err: unknown) => {
      if (o.signal?.aborted) throw abortedError(o.label, this.bytesFetched);
      const c = classifyNetworkError(err, o.url, o.label, this.bytesFetched, this.planned, watch.timedOut);
      if (!c.retryable) throw c.error;
      return c.error;
    };
    try {
      let answer: Awaited<ReturnType<typeof getFollowingRedirects>>;
      try {
        answer = await getFollowingRedirects(
          o.url,
          { range: `bytes=${at}-${end - 1}`, "accept-encoding": "identity" },
          { originHeaders: o.originHeaders },
          watch.controller.signal,
        );
      } catch (err) {
        return { reached: at, error: classify(err) };
      }
      const { response } = answer;
      const cancel = async () => {
        await response.body?.cancel().catch(() => undefined);
      };
      if (response.status === 200) {
        await cancel();
        throw new RangesUnsupported("the host answered a Range request with the whole file (HTTP 200)");
      }
      if (response.status !== 206) {
        await cancel();
        const error = httpError(response.status, o.url, o.label, o.authHint);
        if (response.status >= 500 || response.status === 429 || response.status === 408) return { reached: at, error };
        throw error;
      }
      const range = parseContentRange(response.headers.get("content-range"));
      if (!range || range.start !== at || range.end < at || range.end > end - 1) {
        await cancel();
        throw new RegionVqaError(
          "download_failed",
          `${o.label}: ${o.url} answered "Content-Range: ${response.headers.get("content-range")}" to a ` +
            `request for bytes ${at}-${end - 1}; refusing bytes from another position`,
          { url: o.url, reason: "bad_range" },
        );
      }
      await this.checkSameFile(range.total ?? answer.hostSize, response, answer.hostSha256, cancel);
      return await this.writeBody(response, at, range.end + 1, watch, classify);
    } finally {
      watch.dispose();
    }
  }

  /**
   * The first answer fixes the file's size and identity (a strong ETag, a sha256 the host states);
   * a later answer that differs means the file changed between two requests.
   */
  private async checkSameFile(
    total: number | undefined,
    response: Response,
    hostSha256: string | undefined,
    cancel: () => Promise<unknown>,
  ): Promise<void> {
    const { o } = this;
    const etagHeader = response.headers.get("etag") ?? undefined;
    const etag = etagHeader && !etagHeader.startsWith("W/") ? etagHeader : undefined;
    if (this.total === undefined) {
      if (total === undefined) {
        await cancel();
        throw new RangesUnsupported("the host did not state the file's size in Content-Range");
      }
      if (o.expectedBytes !== undefined && total !== o.expectedBytes) {
        await cancel();
        throw new RegionVqaError(
          "checksum_mismatch",
          `${o.label}: ${o.url} offers ${total} bytes but ${o.expectedBytes} are expected; refusing a different file`,
          { url: o.url, expectedBytes: o.expectedBytes, offeredBytes: total },
        );
      }
      this.total = total;
      this.etag = etag;
      this.hostSha256 = hostSha256;
      try {
        this.file = await open(o.dest, "w+");
        // Sparse where the file system allows it: only the fetched ranges take space.
        await this.file.truncate(total);
      } catch (err) {
        await cancel();
        throw diskError(err, o.label, 0, o.url);
      }
      return;
    }
    const changed =
      (total !== undefined && total !== this.total) ||
      (etag !== undefined && this.etag !== undefined && etag !== this.etag) ||
      (hostSha256 !== undefined && this.hostSha256 !== undefined && hostSha256 !== this.hostSha256);
    if (changed) {
      await cancel();
      throw new RegionVqaError(
        "download_failed",
        `${o.label} changed on the server while its ranges were fetched (size, ETag or stated sha256 differ); ` +
          `run the same command again`,
        { url: o.url, reason: "changed" },
      );
    }
  }

  /** Streams a 206 body to its place in the working file, in batched positional writes. */
  private async writeBody(
    response: Response,
    start: number,
    end: number,
    watch: TransferWatch,
    classify: (err: unknown) => RegionVqaError,
  ): Promise<{ reached: number; error?: RegionVqaError }> {
    const { o } = this;
    const file = this.file as FileHandle;
    let written = start;
    const pending: Uint8Array[] = [];
    let pendingBytes = 0;
    const flush = async () => {
      if (pendingBytes === 0) return;
      const chunk = pending.length === 1 ? pending[0] : Buffer.concat(pending, pendingBytes);
      pending.length = 0;
      pendingBytes = 0;
      try {
        let done = 0;
        while (done < chunk.byteLength) {
          const { bytesWritten } = await file.write(chunk, done, chunk.byteLength - done, written + done);
          done += bytesWritten;
        }
      } catch (err) {
        throw diskError(err, o.label, this.bytesFetched, o.url);
      }
      this.have.add(written, written + chunk.byteLength);
      written += chunk.byteLength;
    };
    let received = start;
    const idleTimeoutMs = o.idleTimeoutMs ?? 60_000;
    watch.arm("idle", idleTimeoutMs);
    try {
      if (response.body) {
        const reader = response.body.getReader();
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          watch.arm("idle", idleTimeoutMs);
          const take = value.subarray(0, Math.max(0, end - received));
          if (take.byteLength === 0) continue;
          received += take.byteLength;
          this.bytesFetched += take.byteLength;
          this.rate.add(take.byteLength);
          pending.push(take);
          pendingBytes += take.byteLength;
          if (pendingBytes >= WRITE_BATCH_BYTES) await flush();
          this.report("downloading");
        }
      }
    } catch (err) {
      // Keep what arrived; the retry asks for the rest.
      await flush();
      if (err instanceof RegionVqaError) throw err;
      return { reached: written, error: classify(err) };
    }
    await flush();
    if (written < end) {
      return {
        reached: written,
        error: new RegionVqaError(
          "download_failed",
          `${o.label}: the server ended the response early at byte ${written} of the range ${start}-${end - 1}`,
          { url: o.url, reason: "dropped" },
        ),
      };
    }
    return { reached: written };
  }

  report(phase: DownloadProgress["phase"], force = false): void {
    const now = Date.now();
    if (!this.o.onProgress || (!force && now - this.lastReport < PROGRESS_INTERVAL_MS)) return;
    this.lastReport = now;
    this.o.onProgress(
      progressOf(this.o.label, phase, this.bytesFetched, Math.max(this.planned, this.bytesFetched), 0, this.rate.bytesPerSecond()),
    );
  }
}

function invalid(label: string, why: string, details: Record<string, unknown> = {}): RegionVqaError {
  return new RegionVqaError("checkpoint_invalid", `${label}: ${why}`, details);
}

/** Parsers of zip structures throw RangeError for 64-bit values beyond 2^53: report those as corrupt. */
function parsing<T>(label: string, parse: () => T): T {
  try {
    return parse();
  } catch (err) {
    if (err instanceof RangeError) throw invalid(label, `corrupt zip archive (${err.message})`);
    throw err;
  }
}

/**
 * Fetches the tensors `selectKeys` picks (and what is needed to find them) into `dest`. Returns what was
 * fetched, or `unsupported` (nothing useful fetched, `dest` removed) when the host ignores Range or the
 * file is neither a zip archive nor safetensors. On failure `dest` is removed.
 */
export async function fetchTensorRanges(options: RangeFetchOptions): Promise<RangeFetchResult | RangeFetchUnsupported> {
  const remote = new RemoteFile(options);
  await rm(options.dest, { force: true });
  try {
    await remote.ensure([[0, HEAD_BYTES]]);
    const total = remote.total as number;
    const head = await remote.read(0, Math.min(16, total));
    let result: Omit<RangeFetchResult, "kind" | "path" | "fileBytes" | "bytesFetched" | "requests" | "spans">;
    if (head.length >= 4 && head.readUInt32LE(0) === 0x04034b50) result = await fetchZip(remote, options);
    else if (looksLikeSafetensors(head, total)) result = await fetchSafetensors(remote, options);
    else if (head.length >= 2 && head[0] === 0x80 && head[1] <= 5) {
      // Refused before the whole file is downloaded for a converter that would refuse it too.
      throw invalid(
        options.label,
        "legacy (pre-1.6, non-zip) PyTorch checkpoint, which region-vqa cannot read; try another --variant",
      );
    } else throw new RangesUnsupported("the file is neither a zip archive (torch.save) nor safetensors");
    await remote.sync();
    remote.report("done", true);
    return {
      kind: "ranges",
      path: options.dest,
      fileBytes: total,
      bytesFetched: remote.bytesFetched,
      requests: remote.requests,
      spans: remote.spans,
      ...result,
    };
  } catch (err) {
    await remote.close();
    await rm(options.dest, { force: true });
    if (err instanceof RangesUnsupported) {
      return { kind: "unsupported", reason: err.message, bytesFetched: remote.bytesFetched, requests: remote.requests };
    }
    throw err;
  } finally {
    await remote.close();
  }
}

/** Opens the working file with the ordinary readers, lets the caller pick tensors, closes it again. */
function selectTensors(options: RangeFetchOptions): { keys: string[]; sd: StateDict } {
  const sd = openStateDict(options.dest);
  try {
    const keys = [...new Set(options.selectKeys(sd))];
    if (!sd.locate) throw new RegionVqaError("internal", `${options.label}: the checkpoint reader cannot locate tensors`);
    return { keys, sd };
  } catch (err) {
    sd.close();
    throw err;
  }
}

async function fetchZip(
  remote: RemoteFile,
  options: RangeFetchOptions,
): Promise<Omit<RangeFetchResult, "kind" | "path" | "fileBytes" | "bytesFetched" | "requests" | "spans">> {
  const { label } = options;
  const total = remote.total as number;
  // The end record is the last 22 bytes unless the archive has a comment (torch writes none): a short
  // tail first, the longest one only when that holds no record.
  let end: ReturnType<typeof parseEndOfCentralDirectory>;
  for (const length of [SHORT_TAIL_BYTES, ZIP_TAIL_BYTES]) {
    const tailStart = total - Math.min(total, length);
    await remote.ensure([[tailStart, total]]);
    const tail = await remote.read(tailStart, total - tailStart);
    end = parsing(label, () => parseEndOfCentralDirectory(tail, label));
    if (end || tailStart === 0) break;
  }
  if (!end) throw invalid(label, "no zip end-of-directory record (truncated or not a zip archive)");
  let cd: CentralDirectoryLocation;
  if ("cd" in end) cd = end.cd;
  else {
    const at = end.zip64RecordOffset;
    if (at + ZIP64_END_RECORD_BYTES > total) throw invalid(label, "bad zip64 end-of-directory record");
    await remote.ensure([[at, at + ZIP64_END_RECORD_BYTES]]);
    const record = await remote.read(at, ZIP64_END_RECORD_BYTES);
    cd = parsing(label, () => parseZip64EndRecord(record, label));
  }
  if (cd.offset + cd.size > total) throw invalid(label, "the zip central directory lies beyond the end of the file");
  await remote.ensure([[cd.offset, cd.offset + cd.size]]);
  const cdBytes = await remote.read(cd.offset, cd.size);
  const entries = parsing(label, () => parseCentralDirectory(cdBytes, cd.entries, label));
  const byName = new Map(entries.map((e) => [e.name, e]));

  // Each entry's bytes run from its local header to the next entry's (or to the central directory).
  const starts = [...new Set(entries.map((e) => e.localHeaderOffset))].sort((a, b) => a - b);
  const regionOf = (e: ZipEntry): [number, number] => {
    const next = starts.find((s) => s > e.localHeaderOffset) ?? cd.offset;
    if (next > cd.offset || next - e.localHeaderOffset < LOCAL_HEADER_BYTES + e.compressedSize) {
      throw invalid(label, `zip entry ${e.name} overlaps the next entry or the central directory`);
    }
    return [e.localHeaderOffset, next];
  };
  let verifiedEntries = 0;
  const fetchEntries = async (wanted: ZipEntry[]) => {
    await remote.ensure(wanted.map(regionOf));
    for (const e of wanted) {
      const [, regionEnd] = regionOf(e);
      if (e.method !== 0) {
        throw invalid(label, `zip entry ${e.name} is compressed (method ${e.method}); torch.save writes stored entries`);
      }
      const dataAt = localDataOffset(e, await remote.read(e.localHeaderOffset, LOCAL_HEADER_BYTES), label);
      if (dataAt + e.compressedSize > regionEnd) throw invalid(label, `zip entry ${e.name} runs into the next entry`);
      const actual = await remote.crc32Of(dataAt, e.compressedSize);
      if (actual !== e.crc32) {
        const hex = (n: number) => `0x${n.toString(16).padStart(8, "0")}`;
        throw new RegionVqaError(
          "checksum_mismatch",
          `${label}: zip entry ${e.name} (bytes ${dataAt}-${dataAt + e.compressedSize - 1} of ${options.url}) ` +
            `has CRC-32 ${hex(actual)} but the archive's central directory states ${hex(e.crc32)}: the host sent ` +
            `corrupt bytes; nothing was installed (run again, or pass --whole-file to check the whole file)`,
          { url: options.url, entry: e.name, expectedCrc32: e.crc32, actualCrc32: actual },
        );
      }
      verifiedEntries++;
    }
  };

  const pickles = entries.filter((e) => /^[^/]+\/data\.pkl$/.test(e.name));
  if (pickles.length !== 1) throw invalid(label, "zip archive is not a torch.save checkpoint (no <folder>/data.pkl)");
  await fetchEntries(pickles);

  const { keys, sd } = selectTensors(options);
  let wanted: ZipEntry[];
  try {
    const names = new Set<string>();
    for (const key of keys) {
      const where = sd.locate!(key);
      if (where.kind !== "zip-entry") throw new RegionVqaError("internal", `${label}: tensor ${key} is not in a zip entry`);
      names.add(where.entry);
    }
    wanted = [...names].map((n) => {
      const e = byName.get(n);
      if (!e) throw invalid(label, `storage ${n} is missing from the archive`);
      return e;
    });
  } finally {
    sd.close();
  }
  await fetchEntries(wanted);
  return {
    format: "zip",
    keys,
    crcVerifiedEntries: verifiedEntries,
    verified: `crc32 of ${verifiedEntries} zip entries`,
  };
}

async function fetchSafetensors(
  remote: RemoteFile,
  options: RangeFetchOptions,
): Promise<Omit<RangeFetchResult, "kind" | "path" | "fileBytes" | "bytesFetched" | "requests" | "spans">> {
  const { label } = options;
  const total = remote.total as number;
  const headerLength = Number((await remote.read(0, 8)).readBigUInt64LE(0));
  if (headerLength > MAX_SAFETENSORS_HEADER || 8 + headerLength > total) {
    throw invalid(label, `safetensors header of ${headerLength} bytes does not fit the file`);
  }
  await remote.ensure([[0, 8 + headerLength]]);
  // The reader parses the header and checks every tensor's offsets against the file's size.
  const { keys, sd } = selectTensors(options);
  const spans: Array<[number, number]> = [];
  try {
    for (const key of keys) {
      const where = sd.locate!(key);
      if (where.kind !== "bytes") throw new RegionVqaError("internal", `${label}: tensor ${key} has no byte range`);
      if (where.start < 8 + headerLength || where.end > total) {
        throw invalid(label, `safetensors tensor ${key} lies outside the data section`);
      }
      spans.push([where.start, where.end]);
    }
  } finally {
    sd.close();
  }
  await remote.ensure(spans);
  options.onLog?.(
    `${label}: safetensors files carry no checksums: the ${keys.length} tensors fetched were checked for size ` +
      `only, their bytes are not hash-verified (--whole-file checks the whole file's sha256 where one is known)`,
  );
  return { format: "safetensors", keys, crcVerifiedEntries: 0, verified: "none" };
}

/**
 * A view of a checkpoint opened over a ranged working file that refuses to read any tensor outside
 * `fetched` (its bytes are zeros in the sparse file, not the checkpoint's).
 */
export function withFetchedTensorsOnly(sd: StateDict, fetched: Iterable<string>, label: string): StateDict {
  const allowed = new Set(fetched);
  return {
    keys: () => sd.keys(),
    has: (key) => sd.has(key),
    info: (key) => sd.info(key),
    read: (key) => {
      if (!allowed.has(key)) {
        throw new RegionVqaError(
          "internal",
          `${label}: tensor "${key}" was not downloaded (only the ${allowed.size} text-tower tensors were); ` +
            `pull again with --whole-file`,
          { key },
        );
      }
      return sd.read(key);
    },
    close: () => sd.close(),
    source: sd.source,
    ...(sd.locate ? { locate: (key: string) => sd.locate!(key) } : {}),
  };
}

/** "247 MB of 891 MB (27.7 %)". */
export function describeFetched(bytes: number, total: number): string {
  return `${formatBytes(bytes)} of ${formatBytes(total)} (${((100 * bytes) / Math.max(1, total)).toFixed(1)} %)`;
}
