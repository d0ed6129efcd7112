/**
 * A corpus of malformed and hostile requests against the real server on loopback (real pipeline on
 * the small real models). Each case must get its 4xx (or, for broken HTTP, a clean connection close),
 * the server must answer a good request right after, and no response may be a 5xx.
 */
import net from "node:net";
import { crc32, deflateSync } from "node:zlib";
import sharp from "sharp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { LocalRegionVqaPipeline } from "../src/pipeline/index.js";
import {
  dataUrl,
  makeImage,
  makeMask,
  realPipeline,
  startServer,
  userMessageWithImage,
  type RunningServer,
} from "./support/server.js";

const BODY_LIMIT = 1_000_000;
const RECEIVE_TIMEOUT_MS = 1500;

let pipeline: LocalRegionVqaPipeline;
let server: RunningServer;
let port: number;
let png: Buffer;
let image: string;

beforeAll(async () => {
  pipeline = await realPipeline();
  server = await startServer(pipeline, {
    limits: { maxBodyBytes: BODY_LIMIT, receiveTimeoutMs: RECEIVE_TIMEOUT_MS, maxTokens: 64 },
  });
  port = Number(new URL(server.url).port);
  png = await makeImage(64, 48);
  image = dataUrl(png);
});
afterAll(async () => {
  await server?.close();
  await pipeline?.dispose();
});

// ---------------------------------------------------------------------------------------------
// Hostile image bytes, made by hand so that each defect is exactly the one named.

function pngChunk(type: string, data: Buffer): Buffer {
  const length = Buffer.alloc(4);
  length.writeUInt32BE(data.length);
  const typed = Buffer.concat([Buffer.from(type, "latin1"), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(typed));
  return Buffer.concat([length, typed, crc]);
}

/** A PNG whose header declares width x height but whose data holds a single row of zeros. */
function pngDeclaring(width: number, height: number): Buffer {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 0; // greyscale
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    pngChunk("IHDR", ihdr),
    pngChunk("IDAT", deflateSync(Buffer.alloc(Math.min(width, 4096) + 1))),
    pngChunk("IEND", Buffer.alloc(0)),
  ]);
}

/** A real PNG whose IHDR checksum is wrong. */
function pngWithBadCrc(source: Buffer): Buffer {
  const copy = Buffer.from(source);
  // Signature (8) + length (4) + "IHDR" (4) + data (13) -> the CRC's first byte.
  copy[8 + 4 + 4 + 13] ^= 0xff;
  return copy;
}

/** A 1x1 GIF whose logical screen is 65535 x 65535. */
function gifWithHugeScreen(): Buffer {
  return Buffer.from([
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0xff, 0xff, 0xff, 0xff, 0x80, 0x00, 0x00, 0xff, 0xff, 0xff, 0x00,
    0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00,
    0x3b,
  ]);
}

/** An SVG "billion laughs": nested entities that would expand to gigabytes. */
const svgBomb = Buffer.from(
  '<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY a "aaaaaaaaaa">' +
    Array.from(
      { length: 9 },
      (_, i) => `<!ENTITY ${String.fromCharCode(98 + i)} "${`&${String.fromCharCode(97 + i)};`.repeat(10)}">`,
    ).join("") +
    ']><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><text>&j;</text></svg>',
);

const b64 = (bytes: Buffer) => bytes.toString("base64");

// ---------------------------------------------------------------------------------------------
// Sending requests: fetch for well-formed HTTP, a raw socket for broken HTTP.

type Outcome =
  { status: number; code?: string; retryAfter?: string | null } | { closed: true; status?: number };

async function outcomeOf(response: Response): Promise<Outcome> {
  const text = await response.text();
  let code: string | undefined;
  try {
    code = JSON.parse(text)?.error?.code;
  } catch {
    code = undefined;
  }
  return { status: response.status, code };
}

function postJson(path: string, body: unknown): Promise<Outcome> {
  return fetch(`${server.url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: typeof body === "string" || body instanceof Uint8Array ? body : JSON.stringify(body),
  }).then(outcomeOf);
}

function send(path: string, init: RequestInit): Promise<Outcome> {
  return fetch(`${server.url}${path}`, init).then(outcomeOf);
}

/**
 * Writes raw bytes (in pieces, with pauses) and reports the status line the server answered with, if
 * any, and whether it closed the connection within `waitMs`.
 */
function raw(
  pieces: Array<string | Buffer>,
  options: { waitMs?: number; pauseMs?: number } = {},
): Promise<Outcome> {
  const waitMs = options.waitMs ?? 5000;
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, "127.0.0.1");
    let received = "";
    let settled = false;
    const finish = (closed: boolean) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      const match = /^HTTP\/1\.1 (\d{3})/.exec(received);
      const status = match ? Number(match[1]) : undefined;
      if (closed) resolve({ closed: true, status });
      else if (status !== undefined) {
        const body = received.slice(received.indexOf("\r\n\r\n") + 4);
        let code: string | undefined;
        const at = body.indexOf("{");
        try {
          code = JSON.parse(body.slice(at, body.lastIndexOf("}") + 1))?.error?.code;
        } catch {
          code = undefined;
        }
        resolve({ status, code });
      } else reject(new Error(`no answer and no close within ${waitMs} ms`));
    };
    const timer = setTimeout(() => finish(false), waitMs);
    socket.on("data", (d: Buffer) => (received += d.toString("latin1")));
    socket.on("close", () => finish(true));
    socket.on("error", () => finish(true));
    socket.on("connect", async () => {
      for (const piece of pieces) {
        if (socket.destroyed) return;
        socket.write(piece);
        if (options.pauseMs) await new Promise((r) => setTimeout(r, options.pauseMs));
      }
    });
  });
}

function multipart(
  parts: Array<{ name: string; value: string | Buffer; filename?: string }>,
  boundary = "XyZzY",
): {
  body: Buffer;
  contentType: string;
} {
  const chunks: Buffer[] = [];
  for (const part of parts) {
    const disposition = `form-data; name="${part.name}"${part.filename ? `; filename="${part.filename}"` : ""}`;
    const type = part.filename ? "Content-Type: application/octet-stream\r\n" : "";
    chunks.push(Buffer.from(`--${boundary}\r\nContent-Disposition: ${disposition}\r\n${type}\r\n`));
    chunks.push(Buffer.isBuffer(part.value) ? part.value : Buffer.from(part.value));
    chunks.push(Buffer.from("\r\n"));
  }
  chunks.push(Buffer.from(`--${boundary}--\r\n`));
  return { body: Buffer.concat(chunks), contentType: `multipart/form-data; boundary=${boundary}` };
}

function sendMultipart(path: string, parts: Parameters<typeof multipart>[0]): Promise<Outcome> {
  const { body, contentType } = multipart(parts);
  return send(path, { method: "POST", headers: { "content-type": contentType }, body });
}

const nested = (depth: number, open: string, close: string, inner = "1") =>
  open.repeat(depth) + inner + close.repeat(depth);

// ---------------------------------------------------------------------------------------------
// The corpus. `expect`: a status and error code, or "closed" (the connection ends, maybe after a 4xx).

interface Case {
  name: string;
  run: () => Promise<Outcome>;
  expect: { status: number; code?: string } | "closed";
}

const ask = (fields: Record<string, unknown>) =>
  postJson("/v1/regions/ask", { question: "What is it?", ...fields });
const caption = (fields: Record<string, unknown>) => postJson("/v1/regions/caption", fields);
const chat = (fields: Record<string, unknown>, imageUrl: string = image) =>
  postJson("/v1/chat/completions", {
    messages: [userMessageWithImage(imageUrl, "What is it?")],
    ...fields,
  });

const cases: Case[] = [
  // Images: corrupt, truncated, bombs, huge dimensions.
  {
    name: "PNG with a bad IHDR checksum",
    run: () => caption({ image: b64(pngWithBadCrc(png)) }),
    expect: { status: 400, code: "image_undecodable" },
  },
  {
    name: "PNG cut in half",
    run: () => caption({ image: b64(png.subarray(0, png.length >> 1)) }),
    expect: { status: 400, code: "image_undecodable" },
  },
  {
    name: "JPEG cut at 60 %",
    run: async () => {
      const jpeg = await sharp(await makeImage(64, 48))
        .jpeg()
        .toBuffer();
      return caption({ image: b64(jpeg.subarray(0, Math.floor(jpeg.length * 0.6))) });
    },
    expect: { status: 400, code: "image_undecodable" },
  },
  {
    name: "JPEG with garbage after its start marker",
    run: () =>
      caption({
        image: b64(Buffer.concat([Buffer.from([0xff, 0xd8, 0xff, 0xe0]), Buffer.alloc(500, 0x41)])),
      }),
    expect: { status: 400, code: "image_undecodable" },
  },
  {
    name: "PNG bomb declaring 30000 x 30000",
    run: () => caption({ image: b64(pngDeclaring(30000, 30000)) }),
    expect: { status: 400, code: "image_too_many_pixels" },
  },
  {
    name: "PNG declaring 2^31-1 x 2^31-1",
    run: () => caption({ image: b64(pngDeclaring(0x7fffffff, 0x7fffffff)) }),
    expect: { status: 400 },
  },
  {
    // Not a bomb for our decoder: libvips decodes the 1x1 frame and ignores the logical screen, so no
    // 65535^2 canvas is ever allocated and the answer is an ordinary (cheap) 200.
    name: "1x1 GIF on a 65535 x 65535 logical screen",
    run: () => caption({ image: b64(gifWithHugeScreen()), max_tokens: 2 }),
    expect: { status: 200 },
  },
  {
    name: "1 x 200000 strip (few pixels, huge padded square)",
    run: async () =>
      caption({
        image: b64(
          await sharp({ create: { width: 1, height: 200_000, channels: 3, background: "#808080" } })
            .png()
            .toBuffer(),
        ),
      }),
    expect: { status: 400, code: "image_too_many_pixels" },
  },
  {
    name: "SVG billion-laughs",
    run: () => caption({ image: b64(svgBomb) }),
    expect: { status: 400, code: "image_undecodable" },
  },
  {
    name: "random bytes as the image",
    run: () =>
      caption({ image: b64(Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 7919) & 0xff))) }),
    expect: { status: 400, code: "image_undecodable" },
  },
  { name: "empty image", run: () => caption({ image: "" }), expect: { status: 400, code: "image_missing" } },
  {
    name: "data URL that is not base64",
    run: () => caption({ image: "data:image/png,%89PNG" }),
    expect: { status: 400, code: "image_undecodable" },
  },
  {
    name: "image as a nested object",
    run: () => caption({ image: { url: image } }),
    expect: { status: 400, code: "invalid_request" },
  },
  // Masks.
  {
    name: "mask of another size",
    run: async () => ask({ image, mask: dataUrl(await makeMask(32, 32, [0, 0, 8, 8])) }),
    expect: { status: 400, code: "mask_size_mismatch" },
  },
  {
    name: "mask bomb declaring 30000 x 30000",
    run: () => ask({ image, mask: b64(pngDeclaring(30000, 30000)) }),
    expect: { status: 400, code: "image_too_many_pixels" },
  },
  {
    name: "undecodable mask",
    run: () => ask({ image, mask: b64(Buffer.from("not a mask")) }),
    expect: { status: 400, code: "mask_undecodable" },
  },
  {
    name: "empty mask",
    run: async () => ask({ image, mask: dataUrl(await makeMask(64, 48, [0, 0, 0, 0])) }),
    expect: { status: 400, code: "region_empty" },
  },
  // Polygons.
  {
    name: "polygon with Infinity (1e999)",
    run: () =>
      postJson("/v1/regions/ask", `{"image":"${image}","question":"Q","polygon":[0,0,1e999,0,10,10]}`),
    expect: { status: 400, code: "polygon_invalid" },
  },
  {
    name: "polygon with NaN as text",
    run: () => ask({ image, polygon: [0, 0, "NaN", 0, 10, 10] }),
    expect: { status: 400, code: "polygon_invalid" },
  },
  {
    name: "polygon with 10001 points",
    run: () => ask({ image, polygon: Array.from({ length: 20002 }, (_, i) => i % 40) }),
    expect: { status: 400, code: "polygon_invalid" },
  },
  {
    name: "polygon with 2 points",
    run: () => ask({ image, polygon: [0, 0, 10, 10] }),
    expect: { status: 400, code: "polygon_invalid" },
  },
  {
    name: "polygon entirely outside the image",
    run: () => ask({ image, polygon: [1e9, 1e9, 2e9, 1e9, 2e9, 2e9] }),
    expect: { status: 400, code: "region_empty" },
  },
  // RLE.
  {
    name: "RLE whose runs overrun the mask",
    run: () => ask({ image, rle: { size: [48, 64], counts: [10, 5000] } }),
    expect: { status: 400, code: "rle_invalid" },
  },
  {
    name: "RLE with negative counts",
    run: () => ask({ image, rle: { size: [48, 64], counts: [10, -5, 3000] } }),
    expect: { status: 400, code: "rle_invalid" },
  },
  {
    name: "RLE with a garbage COCO string",
    run: () => ask({ image, rle: { size: [48, 64], counts: "\u0000\u00ff~~~~" } }),
    expect: { status: 400, code: "rle_invalid" },
  },
  {
    name: "RLE declaring 100000 x 100000",
    run: () => ask({ image, rle: { size: [100000, 100000], counts: [1e10] } }),
    expect: { status: 400 },
  },
  // Boxes and region lists.
  {
    name: "box with Infinity",
    run: () => postJson("/v1/regions/ask", `{"image":"${image}","question":"Q","box":[0,0,1e999,5]}`),
    expect: { status: 400, code: "box_invalid" },
  },
  {
    name: "17 regions (limit 16)",
    run: () => caption({ image, regions: Array.from({ length: 17 }, () => "whole") }),
    expect: { status: 400, code: "too_many_regions" },
  },
  // JSON structure.
  {
    name: "region nested 10000 arrays deep",
    run: () =>
      postJson("/v1/regions/ask", `{"image":"${image}","question":"Q","region":${nested(10_000, "[", "]")}}`),
    expect: { status: 400, code: "region_invalid" },
  },
  {
    name: "regions nested 100000 arrays deep",
    run: () => postJson("/v1/regions/caption", `{"image":"${image}","regions":${nested(100_000, "[", "]")}}`),
    expect: { status: 400 },
  },
  {
    name: "message content nested 10000 objects deep",
    run: () =>
      postJson(
        "/v1/chat/completions",
        `{"messages":[{"role":"user","content":${nested(10_000, '{"a":', "}")}}]}`,
      ),
    expect: { status: 400, code: "invalid_request" },
  },
  {
    name: "truncated JSON",
    run: () => postJson("/v1/regions/ask", '{"question": "Q", "image": "abc'),
    expect: { status: 400, code: "invalid_request" },
  },
  {
    name: "JSON null body",
    run: () => postJson("/v1/regions/ask", "null"),
    expect: { status: 400, code: "invalid_request" },
  },
  {
    name: "JSON array body",
    run: () => postJson("/v1/chat/completions", "[1,2,3]"),
    expect: { status: 400, code: "invalid_request" },
  },
  {
    name: "__proto__ pollution",
    run: () => postJson("/v1/regions/ask", `{"question":"Q","__proto__":{"admin":true}}`),
    expect: { status: 400, code: "invalid_request" },
  },
  {
    name: "invalid UTF-8 in the question",
    run: () =>
      postJson(
        "/v1/regions/ask",
        Buffer.concat([
          Buffer.from(`{"image":"${image}","question":"`),
          Buffer.from([0xc3, 0x28, 0xff]),
          Buffer.from('"}'),
        ]),
      ),
    expect: { status: 400, code: "invalid_request" },
  },
  {
    name: "question of 1 MB (body limit 1 MB)",
    run: () => ask({ image, question: "x".repeat(BODY_LIMIT) }),
    expect: { status: 413, code: "payload_too_large" },
  },
  {
    name: "question over its length limit",
    run: () => ask({ image, question: "x".repeat(5000) }),
    expect: { status: 400, code: "question_too_long" },
  },
  {
    name: "max_tokens as text",
    run: () => ask({ image, max_tokens: "64" }),
    expect: { status: 400, code: "invalid_request" },
  },
  {
    name: "max_tokens above the limit",
    run: () => ask({ image, max_tokens: 1_000_000 }),
    expect: { status: 400, code: "invalid_request" },
  },
  {
    name: "negative temperature",
    run: () => chat({ temperature: -1 }),
    expect: { status: 400, code: "invalid_request" },
  },
  {
    name: "chat with 10000 messages",
    run: () =>
      postJson("/v1/chat/completions", {
        messages: Array.from({ length: 10_000 }, () => ({ role: "user", content: "hi" })),
      }),
    expect: { status: 400, code: "invalid_request" },
  },
  // Content types and sizes.
  {
    name: "text/plain body",
    run: () =>
      send("/v1/regions/ask", { method: "POST", headers: { "content-type": "text/plain" }, body: "What?" }),
    expect: { status: 415, code: "unsupported_media_type" },
  },
  {
    name: "XML body",
    run: () =>
      send("/v1/chat/completions", {
        method: "POST",
        headers: { "content-type": "application/xml" },
        body: "<a/>",
      }),
    expect: { status: 415, code: "unsupported_media_type" },
  },
  {
    name: "multipart without a boundary",
    run: () =>
      send("/v1/regions/ask", {
        method: "POST",
        headers: { "content-type": "multipart/form-data" },
        body: "--x\r\n",
      }),
    expect: { status: 400 },
  },
  {
    name: "JSON body over the limit",
    run: () => postJson("/v1/regions/caption", { image: "A".repeat(BODY_LIMIT + 10) }),
    expect: { status: 413, code: "payload_too_large" },
  },
  {
    name: "multipart with 20 files",
    run: async () =>
      sendMultipart("/v1/regions/caption", [
        { name: "image", value: png, filename: "a.png" },
        ...Array.from({ length: 19 }, () => ({ name: "mask", value: png, filename: "m.png" })),
      ]),
    expect: { status: 413, code: "payload_too_large" },
  },
  {
    name: "multipart with 100 fields",
    run: () =>
      sendMultipart("/v1/regions/ask", [
        { name: "image", value: png, filename: "a.png" },
        ...Array.from({ length: 100 }, (_, i) => ({ name: `f${i}`, value: "x" })),
      ]),
    expect: { status: 413, code: "payload_too_large" },
  },
  {
    name: "multipart file over the limit",
    run: () =>
      sendMultipart("/v1/regions/caption", [
        { name: "image", value: Buffer.alloc(BODY_LIMIT + 100), filename: "big.png" },
      ]),
    expect: { status: 413, code: "payload_too_large" },
  },
  {
    name: "multipart body that never closes its boundary",
    run: () =>
      send("/v1/regions/ask", {
        method: "POST",
        headers: { "content-type": "multipart/form-data; boundary=XyZzY" },
        body: '--XyZzY\r\nContent-Disposition: form-data; name="question"\r\n\r\nWhat',
      }),
    expect: { status: 400 },
  },
  // Conversations, routes and methods.
  {
    name: "unknown conversation id",
    run: () => postJson("/v1/regions/ask", { conversation_id: "conv_nope", question: "Q" }),
    expect: { status: 404, code: "conversation_not_found" },
  },
  {
    name: "DELETE of an unknown conversation",
    run: () => send("/v1/regions/conversations/%00..%2F", { method: "DELETE" }),
    expect: { status: 404, code: "conversation_not_found" },
  },
  {
    name: "GET on a POST route",
    run: () => send("/v1/regions/ask", { method: "GET" }),
    expect: { status: 404, code: "route_not_found" },
  },
  {
    name: "PUT on chat completions",
    run: () => send("/v1/chat/completions", { method: "PUT", body: "{}" }),
    expect: { status: 404, code: "route_not_found" },
  },
  {
    name: "POST on /v1/models",
    run: () => postJson("/v1/models", {}),
    expect: { status: 404, code: "route_not_found" },
  },
  {
    name: "X-HTTP-Method-Override is ignored",
    run: () => send("/v1/regions/ask", { method: "GET", headers: { "x-http-method-override": "POST" } }),
    expect: { status: 404, code: "route_not_found" },
  },
  {
    name: "path traversal out of the UI folder",
    run: () => raw(["GET /..%2F..%2F..%2Fetc%2Fpasswd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"]),
    expect: { status: 404 },
  },
  {
    name: "remote image URL to a metadata service (SSRF)",
    run: () => chat({}, "http://169.254.169.254/latest/meta-data"),
    expect: { status: 403, code: "remote_fetch_forbidden" },
  },
  {
    name: "file:// image URL",
    run: () => chat({}, "file:///etc/passwd"),
    expect: { status: 400, code: "image_undecodable" },
  },
  // Broken HTTP on a raw socket.
  {
    name: "slow-loris: headers, a few body bytes, then silence",
    run: () =>
      raw(
        [
          "POST /v1/regions/ask HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n",
          '{"que',
        ],
        { waitMs: RECEIVE_TIMEOUT_MS + 4000 },
      ),
    expect: "closed",
  },
  {
    name: "slow-loris: headers that never end",
    run: () =>
      raw(["POST /v1/regions/ask HTTP/1.1\r\nHost: x\r\n", "X-Slow: 1\r\n"], {
        waitMs: RECEIVE_TIMEOUT_MS + 4000,
        pauseMs: 200,
      }),
    expect: "closed",
  },
  {
    name: "Content-Length larger than the body, then close",
    run: () =>
      raw(
        [
          "POST /v1/regions/ask HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{}",
        ],
        { waitMs: RECEIVE_TIMEOUT_MS + 4000 },
      ),
    expect: "closed",
  },
  {
    name: "Content-Length together with chunked (request smuggling)",
    run: () =>
      raw([
        "POST /v1/regions/ask HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n",
      ]),
    expect: "closed",
  },
  {
    name: "two different Content-Length headers",
    run: () =>
      raw(["POST /v1/regions/ask HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}"]),
    expect: "closed",
  },
  {
    name: "a 64 KB header",
    run: () => raw([`GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ${"a".repeat(65536)}\r\n\r\n`]),
    expect: "closed",
  },
  {
    name: "not HTTP at all",
    run: () => raw([Buffer.from([0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00])]),
    expect: "closed",
  },
];

/** A cheap good request through the whole pipeline. */
async function goodRequest(): Promise<void> {
  const response = await fetch(`${server.url}/v1/regions/caption`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ image, max_tokens: 2 }),
  });
  const body = (await response.json()) as { captions?: unknown[] };
  expect(response.status, JSON.stringify(body)).toBe(200);
  expect(body.captions).toHaveLength(1);
}

describe("hostile and malformed requests", () => {
  it("has at least 40 cases, each named once", () => {
    expect(cases.length).toBeGreaterThanOrEqual(40);
    expect(new Set(cases.map((c) => c.name)).size).toBe(cases.length);
  });

  it.each(cases.map((c) => [c.name, c] as const))("%s", async (_name, c) => {
    const outcome = await c.run();
    if (c.expect === "closed") {
      expect(outcome, JSON.stringify(outcome)).toHaveProperty("closed", true);
      // If the server said anything before closing, it was a client error, never a 5xx.
      if (outcome.status !== undefined) expect(outcome.status).toBeLessThan(500);
    } else {
      expect(outcome, JSON.stringify(outcome)).toMatchObject({ status: c.expect.status });
      if (c.expect.code) expect((outcome as { code?: string }).code).toBe(c.expect.code);
    }
    await goodRequest();
  });

  it("a client that disconnects mid-stream leaves the server serving", async () => {
    const controller = new AbortController();
    const response = await fetch(`${server.url}/v1/regions/ask`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ image, question: "Describe it.", stream: true, max_tokens: 64 }),
      signal: controller.signal,
    });
    expect(response.status).toBe(200);
    const reader = response.body!.getReader();
    await reader.read();
    controller.abort();
    await goodRequest();
  });

  it("answered no request with a 5xx", async () => {
    const text = await (await fetch(`${server.url}/metrics`)).text();
    const fives = text.split("\n").filter((l) => /^region_vqa_http_requests_total\{.*status="5\d\d"/.test(l));
    expect(fives).toEqual([]);
  });
});
