/**
 * The deployment files in deploy/: the Kubernetes manifests are validated against the Kubernetes API
 * schemas (kubernetes-models, generated from the upstream OpenAPI spec) and checked for dangling
 * references; the HAProxy and nginx configurations are checked by the real haproxy and nginx binaries
 * (Debian's, installed by scripts/setup.sh), and the in-cluster HAProxy config must keep the affinity and
 * failover settings of deploy/haproxy.cfg (the one test/cluster.test.ts exercises).
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { parseAllDocuments } from "yaml";
import { ConfigMap } from "kubernetes-models/v1/ConfigMap";
import { PersistentVolumeClaim } from "kubernetes-models/v1/PersistentVolumeClaim";
import { Service } from "kubernetes-models/v1/Service";
import { Deployment } from "kubernetes-models/apps/v1/Deployment";
import { repoRoot } from "./support/tiny-models.js";

const k8sDir = path.join(repoRoot, "deploy", "k8s");
const MODELS: Record<string, new (data: never) => { validate(): void }> = {
  "v1/ConfigMap": ConfigMap,
  "v1/PersistentVolumeClaim": PersistentVolumeClaim,
  "v1/Service": Service,
  "apps/v1/Deployment": Deployment,
};

interface Manifest {
  file: string;
  apiVersion: string;
  kind: string;
  metadata: { name: string; labels?: Record<string, string> };
  spec?: Record<string, unknown>;
  data?: Record<string, string>;
}

function manifests(): Manifest[] {
  return readdirSync(k8sDir)
    .filter((f) => f.endsWith(".yaml"))
    .flatMap((file) =>
      parseAllDocuments(readFileSync(path.join(k8sDir, file), "utf8")).map((doc) => {
        expect(doc.errors, `${file}: YAML errors`).toEqual([]);
        return { file, ...(doc.toJS() as Omit<Manifest, "file">) };
      }),
    );
}

const has = (cmd: string) => spawnSync("sh", ["-c", `command -v ${cmd}`]).status === 0;
if (process.env.CI === "true" && !(has("haproxy") && has("nginx"))) {
  throw new Error(
    "CI must check the load balancer configs: haproxy and nginx are installed by scripts/setup.sh",
  );
}

interface PodTemplate {
  metadata: { labels: Record<string, string> };
  spec: {
    containers: Array<{
      ports?: Array<{ name?: string }>;
      readinessProbe?: { httpGet?: { path: string; port: string } };
      resources?: { requests?: Record<string, string> };
    }>;
    volumes?: Array<{ configMap?: { name: string }; persistentVolumeClaim?: { claimName: string } }>;
  };
}

describe("Kubernetes manifests (deploy/k8s)", () => {
  const all = manifests();

  it("are valid Kubernetes objects", () => {
    expect(all.length).toBeGreaterThanOrEqual(8);
    for (const m of all) {
      const Model = MODELS[`${m.apiVersion}/${m.kind}`];
      expect(Model, `${m.file}: no schema for ${m.apiVersion} ${m.kind}`).toBeDefined();
      expect(() => new Model(m as never).validate(), `${m.file}: ${m.kind} ${m.metadata.name}`).not.toThrow();
    }
  });

  it("rejects an invalid object (the validator is live)", () => {
    const broken = structuredClone(all.find((m) => m.kind === "Deployment")!) as unknown as {
      spec: { template: { spec: { containers: Array<{ ports: Array<{ containerPort: unknown }> }> } } };
    };
    broken.spec.template.spec.containers[0].ports[0].containerPort = "8080";
    expect(() => new Deployment(broken as never).validate()).toThrow(/containerPort/);
  });

  it("have no dangling references, and every replica is probed on /readyz with resource requests", () => {
    const deployments = all.filter((m) => m.kind === "Deployment");
    const names = (kind: string) => new Set(all.filter((m) => m.kind === kind).map((m) => m.metadata.name));
    for (const s of all.filter((m) => m.kind === "Service")) {
      const selector = (s.spec as { selector: Record<string, string> }).selector;
      const matched = deployments.filter((d) => {
        const labels = (d.spec as { template: PodTemplate }).template.metadata.labels;
        return Object.entries(selector).every(([k, v]) => labels[k] === v);
      });
      expect(matched.length, `Service ${s.metadata.name} selects no pods`).toBeGreaterThan(0);
    }
    for (const d of deployments) {
      const spec = d.spec as { selector: { matchLabels: Record<string, string> }; template: PodTemplate };
      for (const [k, v] of Object.entries(spec.selector.matchLabels))
        expect(spec.template.metadata.labels[k]).toBe(v);
      for (const v of spec.template.spec.volumes ?? []) {
        if (v.configMap) expect(names("ConfigMap").has(v.configMap.name)).toBe(true);
        if (v.persistentVolumeClaim)
          expect(names("PersistentVolumeClaim").has(v.persistentVolumeClaim.claimName)).toBe(true);
      }
      for (const c of spec.template.spec.containers) {
        expect(c.resources?.requests?.cpu, `${d.metadata.name}: cpu request`).toBeDefined();
        const probePort = c.readinessProbe?.httpGet?.port;
        if (probePort) expect(c.ports?.some((p) => p.name === probePort)).toBe(true);
      }
    }
    const replicas = deployments.filter(
      (d) => d.metadata.name.startsWith("region-vqa") && !/redis|haproxy/.test(d.metadata.name),
    );
    expect(replicas.map((d) => d.metadata.name).sort()).toEqual(["region-vqa", "region-vqa-gpu"]);
    for (const d of replicas) {
      const c = (d.spec as { template: PodTemplate }).template.spec.containers[0];
      expect(c.readinessProbe?.httpGet?.path).toBe("/readyz");
    }
    const gpu = (
      replicas.find((d) => d.metadata.name === "region-vqa-gpu")!.spec as { template: PodTemplate }
    ).template;
    expect(gpu.spec.containers[0].resources?.requests?.["nvidia.com/gpu"]).toBe("1");
  });

  it.skipIf(!has("haproxy"))(
    "the in-cluster HAProxy config is valid and keeps deploy/haproxy.cfg's affinity and failover",
    () => {
      const config = all.find((m) => m.kind === "ConfigMap" && m.metadata.name === "region-vqa-haproxy")!
        .data!["haproxy.cfg"];
      const dir = mkdtempSync(path.join(os.tmpdir(), "rvqa-haproxy-"));
      try {
        writeFileSync(path.join(dir, "haproxy.cfg"), config);
        const check = spawnSync("haproxy", ["-c", "-f", path.join(dir, "haproxy.cfg")], { encoding: "utf8" });
        expect(check.status, check.stderr + check.stdout).toBe(0);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
      const local = readFileSync(path.join(repoRoot, "deploy", "haproxy.cfg"), "utf8");
      const key = (text: string) =>
        text
          .split("\n")
          .map((l) => l.trim())
          .filter((l) =>
            /^(stick|retry-on|retries|option redispatch|balance|option httpchk|http-check)/.test(l),
          );
      expect(key(config)).toEqual(key(local));
      expect(key(local).length).toBeGreaterThanOrEqual(7);
    },
  );

  it.skipIf(!has("haproxy"))("deploy/haproxy.cfg is valid", () => {
    const check = spawnSync("haproxy", ["-c", "-f", path.join(repoRoot, "deploy", "haproxy.cfg")], {
      encoding: "utf8",
    });
    expect(check.status, check.stderr + check.stdout).toBe(0);
  });

  it.skipIf(!has("nginx"))("deploy/nginx.conf is valid", () => {
    const prefix = mkdtempSync(path.join(os.tmpdir(), "rvqa-nginx-"));
    try {
      const check = spawnSync(
        "nginx",
        ["-t", "-p", prefix, "-c", path.join(repoRoot, "deploy", "nginx.conf")],
        {
          encoding: "utf8",
        },
      );
      expect(check.status, check.stderr).toBe(0);
    } finally {
      rmSync(prefix, { recursive: true, force: true });
    }
  });
});
