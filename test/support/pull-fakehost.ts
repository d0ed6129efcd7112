/**
 * A real HTTP server on loopback that plays the publishing hosts for pull tests: it serves files under
 * the same URL paths as huggingface.co and download.openxlab.org.cn, honours Range / If-Range like they
 * do (`bytes=N-` and `bytes=N-M`), can redirect Hugging Face `resolve/` URLs to a second "CDN" server
 * (another origin) stating the file's sha256 in X-Linked-Etag, and can misbehave on purpose (drop the
 * connection after N bytes, ignore Range, stall, answer a wrong Content-Range). It counts every body
 * byte it sends and records which bytes of the file each response carried.
 */
import { createHash } from "node:crypto";
import http from "node:http";
import type { AddressInfo } from "node:net";

export interface RequestRecord {
  server: "origin" | "cdn";
  path: string;
  range?: string;
  ifRange?: string;
  authorization?: string;
  status?: number;
  /** The bytes [start, end) of the file that the response's body carried (when a body was sent). */
  served?: [number, number];
}

export type Misbehaviour =
  /** Serve this request normally (to misbehave on a later one). */
  | { kind: "none" }
  | { kind: "drop"; afterBytes: number }
  | { kind: "stall"; afterBytes: number }
  | { kind: "ignore-range" }
  | { kind: "wrong-range" }
  | { kind: "status"; status: number };

export interface FakeHost {
  /** Base URL of the origin server (use as the Hugging Face / OpenXLab base URL). */
  baseUrl: string;
  cdnUrl: string;
  requests: RequestRecord[];
  /** Body bytes sent per URL path (origin and CDN together, keyed by the origin path). */
  bytesSent: Map<string, number>;
  /** Serve (or replace) a file under an origin path; a new content gets a new ETag. */
  setFile(urlPath: string, body: Buffer): void;
  /** Misbehave on the next requests for that origin path, one entry per request. */
  misbehave(urlPath: string, ...plan: Misbehaviour[]): void;
  /** Make the CDN serve other bytes for an origin path while the origin still states the real sha256. */
  tamperCdn(urlPath: string, body: Buffer): void;
  /** Answer 401 on Hugging Face paths unless this bearer token is sent. */
  requireToken(token: string | undefined): void;
  /** Ignore every Range header from now on (a host without Range support: always 200 and the whole file). */
  ignoreRanges(ignore: boolean): void;
  close(): Promise<void>;
}

interface Served {
  body: Buffer;
  etag: string;
  sha256: string;
}

export async function startFakeHost(options: { redirectHfToCdn?: boolean } = {}): Promise<FakeHost> {
  const files = new Map<string, Served>();
  const cdnFiles = new Map<string, Served>();
  const plans = new Map<string, Misbehaviour[]>();
  const requests: RequestRecord[] = [];
  const bytesSent = new Map<string, number>();
  let token: string | undefined;
  let version = 0;
  let ignoreAllRanges = false;

  const serveBody = (
    server: "origin" | "cdn",
    key: string,
    file: Served,
    req: http.IncomingMessage,
    res: http.ServerResponse,
    record: RequestRecord,
  ) => {
    const plan = plans.get(key)?.shift();
    if (plan?.kind === "status") {
      record.status = plan.status;
      res.writeHead(plan.status).end();
      return;
    }
    const size = file.body.length;
    let start = 0;
    let end = size; // exclusive
    // `bytes=N-` (resumption) and `bytes=N-M` (a slice, what ranged text-tower fetches send).
    const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? "");
    const ifRange = req.headers["if-range"];
    const rangeValid =
      range && (!ifRange || ifRange === file.etag) && plan?.kind !== "ignore-range" && !ignoreAllRanges;
    const headers: http.OutgoingHttpHeaders = { etag: file.etag, "accept-ranges": "bytes" };
    let status = 200;
    if (rangeValid) {
      start = Number(range[1]);
      if (range[2] !== "") end = Math.min(size, Number(range[2]) + 1);
      if (start >= size || end <= start) {
        record.status = 416;
        res.writeHead(416, { "content-range": `bytes */${size}` }).end();
        return;
      }
      status = 206;
      const claimedStart = plan?.kind === "wrong-range" ? start + 7 : start;
      headers["content-range"] = `bytes ${claimedStart}-${end - 1}/${size}`;
      record.served = [start, end];
    } else {
      record.served = [0, size];
    }
    headers["content-length"] = end - start;
    record.status = status;
    res.writeHead(status, headers);
    const body = file.body.subarray(start, end);
    const count = (n: number) => bytesSent.set(key, (bytesSent.get(key) ?? 0) + n);
    if (plan?.kind === "drop" || plan?.kind === "stall") {
      const part = body.subarray(0, plan.afterBytes);
      count(part.length);
      record.served = [start, start + part.length];
      res.write(part, () => {
        // Let the bytes reach the client before cutting (drop) or going silent (stall).
        if (plan.kind === "drop") setTimeout(() => req.socket.destroy(), 250);
      });
      if (plan.kind === "stall") res.on("close", () => undefined);
      return;
    }
    count(body.length);
    res.end(body);
  };

  const cdn = http.createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://cdn");
    const record: RequestRecord = {
      server: "cdn",
      path: url.pathname,
      range: req.headers.range,
      ifRange: req.headers["if-range"] as string | undefined,
      authorization: req.headers.authorization,
    };
    requests.push(record);
    const key = url.searchParams.get("origin") ?? "";
    const file = cdnFiles.get(key) ?? files.get(key);
    if (!file) {
      record.status = 404;
      res.writeHead(404).end();
      return;
    }
    serveBody("cdn", key, file, req, res, record);
  });

  const origin = http.createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://origin");
    const record: RequestRecord = {
      server: "origin",
      path: url.pathname,
      range: req.headers.range,
      ifRange: req.headers["if-range"] as string | undefined,
      authorization: req.headers.authorization,
    };
    requests.push(record);
    const isHf = url.pathname.includes("/resolve/");
    if (isHf && token !== undefined && req.headers.authorization !== `Bearer ${token}`) {
      record.status = 401;
      res.writeHead(401).end("unauthorized");
      return;
    }
    const file = files.get(url.pathname);
    if (!file) {
      record.status = 404;
      res.writeHead(404, { "content-type": "text/plain" }).end("Entry not found");
      return;
    }
    if (isHf && options.redirectHfToCdn) {
      // What huggingface.co does for LFS files: a redirect to a signed CDN URL, stating sha256 and size.
      record.status = 302;
      const target = `${cdnUrl}/repos/${file.sha256}?origin=${encodeURIComponent(url.pathname)}&sig=x`;
      res
        .writeHead(302, {
          location: target,
          "x-linked-etag": `"${file.sha256}"`,
          "x-linked-size": String(file.body.length),
        })
        .end();
      return;
    }
    serveBody("origin", url.pathname, file, req, res, record);
  });

  const listen = (server: http.Server) =>
    new Promise<string>((resolve) =>
      server.listen(0, "127.0.0.1", () =>
        resolve(`http://127.0.0.1:${(server.address() as AddressInfo).port}`),
      ),
    );
  const baseUrl = await listen(origin);
  const cdnUrl = await listen(cdn);

  return {
    baseUrl,
    cdnUrl,
    requests,
    bytesSent,
    setFile(urlPath, body) {
      version++;
      const sha256 = createHash("sha256").update(body).digest("hex");
      files.set(urlPath, { body, sha256, etag: `"${sha256.slice(0, 16)}-${version}"` });
    },
    tamperCdn(urlPath, body) {
      const real = files.get(urlPath);
      if (real) cdnFiles.set(urlPath, { ...real, body });
    },
    misbehave(urlPath, ...plan) {
      plans.set(urlPath, [...(plans.get(urlPath) ?? []), ...plan]);
    },
    requireToken(t) {
      token = t;
    },
    ignoreRanges(ignore) {
      ignoreAllRanges = ignore;
    },
    async close() {
      for (const s of [origin, cdn]) {
        s.closeAllConnections();
        await new Promise<void>((resolve) => s.close(() => resolve()));
      }
    },
  };
}

/** Deterministic pseudo-random bytes (a stand-in GGUF payload whose content does not matter). */
export function fakeBytes(length: number, seed: number): Buffer {
  const out = Buffer.alloc(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

export function sha256Of(body: Buffer): string {
  return createHash("sha256").update(body).digest("hex");
}
