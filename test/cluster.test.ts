/**
 * Scale-out, for real: `deploy/local-cluster.sh` starts Debian's redis-server, two replicas of
 * `region-vqa serve` on the bundled model and HAProxy (deploy/haproxy.cfg) on loopback; the tests talk
 * to the load balancer and to the replicas as a client would, read /metrics, and kill processes with
 * SIGKILL. Nothing is mocked. Skipped (and failing under CI=true) without redis-server and haproxy,
 * which scripts/setup.sh installs.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { freePortRange, shapesSceneRequest } from "../bench/cluster.js";
import { alive } from "./support/processes.js";
import { repoRoot } from "./support/tiny-models.js";

const haveTools = ["redis-server", "haproxy", "nginx", "curl"].every(
  (cmd) => spawnSync("sh", ["-c", `command -v ${cmd}`]).status === 0,
);
const built = existsSync(path.join(repoRoot, "dist", "cli", "index.js"));
if (process.env.CI === "true" && !(haveTools && built)) {
  throw new Error(
    "CI must run the cluster tests: redis-server, haproxy, nginx and curl are installed by scripts/setup.sh",
  );
}

interface Cluster {
  url: string;
  stateDir: string;
  redisPort: number;
  script: ChildProcess;
  replicaUrl(i: number): string;
  pid(name: string): number;
}

async function startCluster(replicas: number): Promise<Cluster> {
  const port = await freePortRange(replicas + 1);
  const stateDir = mkdtempSync(path.join(os.tmpdir(), "rvqa-cluster-test-"));
  const script = spawn(
    "bash",
    [
      "deploy/local-cluster.sh",
      "--replicas",
      String(replicas),
      "--port",
      String(port),
      "--state-dir",
      stateDir,
      "--ready-timeout",
      "240",
    ],
    {
      cwd: repoRoot,
      stdio: ["ignore", "pipe", "pipe"],
      detached: true,
    },
  );
  let out = "";
  let err = "";
  script.stderr!.on("data", (d: Buffer) => (err += d.toString()));
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`cluster not ready in time:\n${err}`)), 250_000);
    script.stdout!.on("data", (d: Buffer) => {
      out += d.toString();
      const m = /cluster ready: (http:\/\/\S+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    script.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`local-cluster.sh exited with ${code}:\n${err}`));
    });
  });
  const read = (name: string) => readFileSync(path.join(stateDir, name), "utf8").trim();
  return {
    url,
    stateDir,
    redisPort: port + replicas + 1,
    script,
    replicaUrl: (i) => `http://127.0.0.1:${read(`replica-${i}.port`)}`,
    pid: (name) => Number(read(`${name}.pid`)),
  };
}

/** The shapes world's scene `index` as a PNG data URL and the box of its first object. */
const scene = (index: number) => shapesSceneRequest(77, index);

interface Answer {
  status: number;
  replica: string | null;
  conversationId: string | null;
  body: { answer?: string; turns?: number; conversation_id?: string; error?: { code: string } };
}

async function ask(url: string, body: Record<string, unknown>, conversationId?: string): Promise<Answer> {
  const res = await fetch(`${url}/v1/regions/ask`, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      ...(conversationId ? { "x-conversation-id": conversationId } : {}),
    },
    body: JSON.stringify({ temperature: 0, max_tokens: 16, ...body }),
  });
  return {
    status: res.status,
    replica: res.headers.get("x-region-vqa-replica"),
    conversationId: res.headers.get("x-conversation-id"),
    body: (await res.json()) as Answer["body"],
  };
}

/** Sum of a Prometheus counter's samples whose labels include `labels`. */
async function metric(url: string, name: string, labels: Record<string, string> = {}): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  let sum = 0;
  for (const line of text.split("\n")) {
    if (!line.startsWith(name)) continue;
    const m = /^(\w+)(\{[^}]*\})? ([0-9.e+-]+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const ls = m[2] ?? "";
    if (Object.entries(labels).every(([k, v]) => ls.includes(`${k}="${v}"`))) sum += Number(m[3]);
  }
  return sum;
}

const QUESTIONS = [
  "What colour is the highlighted region?",
  "What shape is it?",
  "Where is it in the image?",
];

describe.skipIf(!(haveTools && built))(
  "two replicas behind HAProxy with Redis (deploy/local-cluster.sh)",
  () => {
    let cluster: Cluster;
    const replicaUrls: Record<string, string> = {};
    /** nginx in front of the same replicas (started by the nginx test, stopped in afterAll). */
    let nginx: ChildProcess | undefined;
    let nginxPrefix = "";
    let nginxUrl = "";
    const nginxConversations: Array<{ id: string; replica: string }> = [];
    /** The replica the failover test kills. */
    let killed = "";

    beforeAll(async () => {
      cluster = await startCluster(2);
      for (const i of [1, 2]) replicaUrls[`replica-${i}`] = cluster.replicaUrl(i);
    }, 300_000);

    afterAll(async () => {
      nginx?.kill("SIGTERM");
      if (nginxPrefix) rmSync(nginxPrefix, { recursive: true, force: true });
      if (!cluster) return;
      const pids = ["redis", "haproxy", "replica-1", "replica-2"].map((n) => cluster.pid(n));
      if (cluster.script.exitCode === null) {
        const exited = new Promise((r) => cluster.script.once("exit", r));
        cluster.script.kill("SIGTERM");
        await exited;
      }
      rmSync(cluster.stateDir, { recursive: true, force: true });
      // Nothing the script started is left behind.
      for (const pid of pids) expect(alive(pid), `pid ${pid} still running`).toBe(false);
    }, 60_000);

    it("routes >= 95 % of follow-ups to the replica holding their KV cache (20 conversations x 3 follow-ups)", async () => {
      const before = {
        reused: 0,
        rebuilt: 0,
      };
      for (const u of Object.values(replicaUrls)) {
        before.reused += await metric(u, "region_vqa_conversation_turns_total", { kv: "reused" });
        before.rebuilt += await metric(u, "region_vqa_conversation_turns_total", { kv: "rebuilt" });
      }
      const owners = new Set<string>();
      let sameReplica = 0;
      for (let c = 0; c < 20; c++) {
        const first = await ask(cluster.url, { ...(await scene(c)), question: QUESTIONS[0] });
        expect(first.status).toBe(200);
        const id = first.conversationId!;
        expect(id).toBe(first.body.conversation_id);
        owners.add(first.replica!);
        for (let f = 0; f < 3; f++) {
          const next = await ask(cluster.url, { question: QUESTIONS[1 + (f % 2)] }, id);
          expect(next.status).toBe(200);
          expect(next.body.turns).toBe(2 + f);
          if (next.replica === first.replica) sameReplica++;
        }
      }
      // New conversations are spread over both replicas; follow-ups stick to theirs.
      expect(owners.size).toBe(2);
      let reused = -before.reused;
      let rebuilt = -before.rebuilt;
      for (const u of Object.values(replicaUrls)) {
        reused += await metric(u, "region_vqa_conversation_turns_total", { kv: "reused" });
        rebuilt += await metric(u, "region_vqa_conversation_turns_total", { kv: "rebuilt" });
      }
      expect(reused + rebuilt).toBe(60);
      expect(reused / 60).toBeGreaterThanOrEqual(0.95);
      expect(sameReplica / 60).toBeGreaterThanOrEqual(0.95);
    }, 300_000);

    it("encodes a region once for both replicas (shared cache)", async () => {
      const s = await scene(100);
      const encodes = async () => {
        let n = 0;
        for (const u of Object.values(replicaUrls)) {
          n += await metric(u, "region_vqa_pipeline_stage_duration_seconds_count", { stage: "encode" });
        }
        return n;
      };
      const before = await encodes();
      const hitsBefore = await metric(replicaUrls["replica-2"], "region_vqa_cache_lookups_total", {
        cache: "shared_vision_embeddings",
        result: "hit",
      });
      const a = await ask(replicaUrls["replica-1"], { ...s, question: QUESTIONS[0] });
      const b = await ask(replicaUrls["replica-2"], { ...s, question: QUESTIONS[0] });
      expect([a.replica, b.replica]).toEqual(["replica-1", "replica-2"]);
      expect(b.body.answer).toBe(a.body.answer);
      expect((await encodes()) - before).toBe(1);
      const hitsAfter = await metric(replicaUrls["replica-2"], "region_vqa_cache_lookups_total", {
        cache: "shared_vision_embeddings",
        result: "hit",
      });
      expect(hitsAfter - hitsBefore).toBe(1);
    }, 120_000);

    it("segments an image once for both replicas: a click on the second reuses the first's encode", async () => {
      const s = await scene(150);
      const [x1, y1, x2, y2] = s.box;
      const click = { image: s.image, points: [[(x1 + x2) / 2, (y1 + y2) / 2]] };
      const segmenterHits = (u: string, result: string) =>
        metric(u, "region_vqa_cache_lookups_total", { cache: "shared_segmenter_embeddings", result });
      const before = await segmenterHits(replicaUrls["replica-2"], "hit");
      const post = (u: string) =>
        fetch(`${u}/v1/regions/segment`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify(click),
        });
      const a = await post(replicaUrls["replica-1"]);
      expect(a.status).toBe(200);
      const b = await post(replicaUrls["replica-2"]);
      expect(b.status).toBe(200);
      const [ja, jb] = (await Promise.all([a.json(), b.json()])) as Array<{
        score: number;
        mask: { rle: unknown };
        timings: { embeddings_cached: boolean };
      }>;
      expect(ja.timings.embeddings_cached).toBe(false);
      expect(jb.timings.embeddings_cached).toBe(true);
      expect(jb.score).toBe(ja.score);
      expect(jb.mask.rle).toEqual(ja.mask.rle);
      expect((await segmenterHits(replicaUrls["replica-2"], "hit")) - before).toBe(1);
    }, 120_000);

    it("nginx (deploy/nginx.conf) keeps conversations with client-chosen ids on one replica", async () => {
      const port = await freePortRange(0);
      nginxPrefix = mkdtempSync(path.join(os.tmpdir(), "rvqa-nginx-"));
      const servers = Object.values(replicaUrls)
        .map((u) => `        server ${new URL(u).host} max_fails=1 fail_timeout=10s;`)
        .join("\n");
      const config = readFileSync(path.join(repoRoot, "deploy", "nginx.conf"), "utf8")
        .replace(/^ {8}server 127\.0\.0\.1:808\d.*\n/gm, "")
        .replace("hash $region_vqa_affinity consistent;", `hash $region_vqa_affinity consistent;\n${servers}`)
        .replace("listen 127.0.0.1:8080;", `listen 127.0.0.1:${port};`);
      writeFileSync(path.join(nginxPrefix, "nginx.conf"), config);
      nginx = spawn(
        "nginx",
        ["-p", nginxPrefix, "-c", path.join(nginxPrefix, "nginx.conf"), "-g", "daemon off;"],
        {
          stdio: "ignore",
        },
      );
      nginxUrl = `http://127.0.0.1:${port}`;
      for (let i = 0; i < 50; i++) {
        if (
          await fetch(`${nginxUrl}/readyz`).then(
            (r) => r.ok,
            () => false,
          )
        )
          break;
        await new Promise((r) => setTimeout(r, 100));
      }
      // At least 8 conversations, and until both replicas hold some (for the nginx failover test).
      const holders = () => new Set(nginxConversations.map((c) => c.replica)).size;
      for (let c = 0; c < 40 && (c < 8 || holders() < 2); c++) {
        const id = `client-chosen-${c}-${Date.now()}`;
        const first = await ask(nginxUrl, { ...(await scene(400 + c)), question: QUESTIONS[0] }, id);
        expect(first.status).toBe(200);
        expect(first.body.conversation_id).toBe(id);
        for (const q of QUESTIONS.slice(1)) {
          const next = await ask(nginxUrl, { question: q }, id);
          expect(next.replica).toBe(first.replica);
          expect(next.body.turns).toBeGreaterThan(1);
        }
        nginxConversations.push({ id, replica: first.replica! });
      }
    }, 120_000);

    it("continues a conversation on the other replica when its own is killed, answering as an uninterrupted one", async () => {
      const s = await scene(200);
      const first = await ask(cluster.url, { ...s, question: QUESTIONS[0] });
      const id = first.conversationId!;
      const second = await ask(cluster.url, { question: QUESTIONS[1] }, id);
      expect(second.replica).toBe(first.replica);
      const owner = first.replica!;
      const survivor = owner === "replica-1" ? "replica-2" : "replica-1";

      // The reference: the same image, region and questions on the surviving replica, never interrupted.
      const ref1 = await ask(replicaUrls[survivor], { ...s, question: QUESTIONS[0] });
      const ref2 = await ask(replicaUrls[survivor], { question: QUESTIONS[1] }, ref1.conversationId!);
      const ref3 = await ask(replicaUrls[survivor], { question: QUESTIONS[2] }, ref1.conversationId!);
      expect([first.body.answer, second.body.answer]).toEqual([ref1.body.answer, ref2.body.answer]);

      const rebuiltBefore = await metric(replicaUrls[survivor], "region_vqa_conversation_turns_total", {
        kv: "rebuilt",
      });
      process.kill(cluster.pid(owner), "SIGKILL");
      // At once, while the load balancer may still think the owner is up.
      const third = await ask(cluster.url, { question: QUESTIONS[2] }, id);
      expect(third.status).toBe(200);
      expect(third.replica).toBe(survivor);
      expect(third.body.turns).toBe(3);
      expect(third.body.conversation_id).toBe(id);
      expect(third.body.answer).toBe(ref3.body.answer);
      expect(
        await metric(replicaUrls[survivor], "region_vqa_conversation_turns_total", { kv: "rebuilt" }),
      ).toBe(rebuiltBefore + 1);
      // The next follow-up stays on the survivor, on its now local KV cache.
      const fourth = await ask(cluster.url, { question: QUESTIONS[1] }, id);
      expect(fourth.replica).toBe(survivor);
      expect(fourth.body.turns).toBe(4);
      killed = owner;
      delete replicaUrls[owner];
    }, 120_000);

    it("nginx passes the killed replica's conversations to the live one, which continues them", async () => {
      const survivor = Object.keys(replicaUrls)[0];
      const onKilled = nginxConversations.filter((c) => c.replica === killed).length;
      expect(onKilled).toBeGreaterThan(0);
      for (const c of nginxConversations) {
        const next = await ask(nginxUrl, { question: QUESTIONS[0] }, c.id);
        expect(next.status).toBe(200);
        expect(next.replica).toBe(survivor);
        expect(next.body.turns).toBe(4);
      }
    }, 120_000);

    it("keeps answering while Redis is down (degraded) and shares again once it is back", async () => {
      const [name, url] = Object.entries(replicaUrls)[0];
      process.kill(cluster.pid("redis"), "SIGKILL");
      const t0 = Date.now();
      const s = await scene(300);
      const first = await ask(url, { ...s, question: QUESTIONS[0] });
      expect(first.status).toBe(200);
      const next = await ask(url, { question: QUESTIONS[1] }, first.conversationId!);
      expect(next.status).toBe(200);
      expect(next.replica).toBe(name);
      expect(Date.now() - t0).toBeLessThan(30_000);
      const ready = (await (await fetch(`${url}/readyz`)).json()) as {
        status: string;
        shared_state: { state: string };
      };
      expect(ready.status).toBe("degraded");
      expect(ready.shared_state.state).toBe("degraded");
      expect(
        await metric(url, "region_vqa_shared_state_commands_total", { result: "error" }),
      ).toBeGreaterThan(0);
      expect((await fetch(`${cluster.url}/readyz`)).status).toBe(200);

      // Redis back on its port: the replica reconnects by itself and shares entries again.
      const redis = spawn(
        "redis-server",
        ["--bind", "127.0.0.1", "--port", String(cluster.redisPort), "--save", ""],
        {
          stdio: "ignore",
        },
      );
      try {
        let state = "degraded";
        for (let i = 0; i < 100 && state !== "ok"; i++) {
          await new Promise((r) => setTimeout(r, 100));
          state = ((await (await fetch(`${url}/readyz`)).json()) as { shared_state: { state: string } })
            .shared_state.state;
        }
        expect(state).toBe("ok");
        const setsBefore = await metric(url, "region_vqa_shared_state_commands_total", {
          op: "feature_set",
          result: "ok",
        });
        const after = await ask(url, { ...(await scene(301)), question: QUESTIONS[0] });
        expect(after.status).toBe(200);
        // The write is in the background of the answer: give it a moment.
        let sets = setsBefore;
        for (let i = 0; i < 50 && sets === setsBefore; i++) {
          await new Promise((r) => setTimeout(r, 50));
          sets = await metric(url, "region_vqa_shared_state_commands_total", {
            op: "feature_set",
            result: "ok",
          });
        }
        expect(sets).toBe(setsBefore + 1);
      } finally {
        redis.kill("SIGKILL");
      }
    }, 120_000);
  },
);
