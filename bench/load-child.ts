/**
 * The load generator of bench/imaging.ts, in a process of its own so that building and sending
 * requests does not load the event loop being measured. Reads a JSON job file:
 *   { url, path, clients, seconds, maxRequests, bodies: [{ file }] | [{ json }] }
 * where each `file` is a prepared multipart body (with its content type) or `json` a JSON body; the
 * clients take bodies in turn (each request a different one while they last). Prints one JSON line:
 * statuses, latencies (ms), wall seconds.
 */
import { readFileSync } from "node:fs";

interface Job {
  url: string;
  path: string;
  clients: number;
  seconds: number;
  maxRequests: number;
  bodies: Array<{ file?: string; contentType?: string; json?: string }>;
}

const job = JSON.parse(readFileSync(process.argv[2], "utf8")) as Job;
const bodies = job.bodies.map((b) =>
  b.file
    ? { data: readFileSync(b.file), type: b.contentType! }
    : { data: Buffer.from(b.json!), type: "application/json" },
);
const latencies: number[] = [];
const statuses: Record<string, number> = {};
let next = 0;
const started = performance.now();
const deadline = started + job.seconds * 1000;

async function client(): Promise<void> {
  while (performance.now() < deadline && next < job.maxRequests) {
    const body = bodies[next++ % bodies.length];
    const t0 = performance.now();
    let status: string;
    try {
      const r = await fetch(`${job.url}${job.path}`, {
        method: "POST",
        headers: { "content-type": body.type },
        body: body.data,
      });
      await r.arrayBuffer();
      status = String(r.status);
    } catch (err) {
      status = (err as Error).name;
    }
    statuses[status] = (statuses[status] ?? 0) + 1;
    latencies.push(performance.now() - t0);
  }
}

await Promise.all(Array.from({ length: job.clients }, () => client()));
process.stdout.write(
  `${JSON.stringify({ statuses, latencies, wallSeconds: (performance.now() - started) / 1000 })}\n`,
);
