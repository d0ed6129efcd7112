/** Small statistics and machine-description helpers shared by the benchmarks. */
import { readFileSync } from "node:fs";
import os from "node:os";

/** The q-quantile (0..1) of `values` by linear interpolation between order statistics; NaN when empty. */
export function quantile(values: readonly number[], q: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const at = (sorted.length - 1) * q;
  const lo = Math.floor(at);
  const hi = Math.ceil(at);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (at - lo);
}

export const median = (values: readonly number[]): number => quantile(values, 0.5);

/** Rounds to `digits` decimals; NaN and infinities become null so that JSON stays valid and honest. */
export function round(value: number, digits = 1): number | null {
  if (!Number.isFinite(value)) return null;
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}

export interface MachineInfo {
  cpuModel: string;
  cores: number;
  totalMemGiB: number;
  node: string;
  platform: string;
  /** 1, 5 and 15 minute load averages when the benchmark started. */
  loadAverage: number[];
}

function cpuModelName(): string {
  try {
    const line = readFileSync("/proc/cpuinfo", "utf8")
      .split("\n")
      .find((l) => l.startsWith("model name"));
    if (line) return line.split(":")[1].trim();
  } catch {
    // Not Linux: fall through to what Node reports.
  }
  return os.cpus()[0]?.model ?? "unknown";
}

export function machineInfo(): MachineInfo {
  return {
    cpuModel: cpuModelName(),
    cores: os.availableParallelism(),
    totalMemGiB: round(os.totalmem() / 2 ** 30, 1) ?? 0,
    node: process.version,
    platform: `${os.type()} ${os.release()} ${os.arch()}`,
    loadAverage: os.loadavg().map((l) => round(l, 2) ?? 0),
  };
}

/** Samples this process's RSS every `everyMs` until stopped; returns the peak in MiB. */
export function rssSampler(everyMs = 100): { stop(): number } {
  let peak = process.memoryUsage.rss();
  const timer = setInterval(() => {
    peak = Math.max(peak, process.memoryUsage.rss());
  }, everyMs);
  return {
    stop(): number {
      clearInterval(timer);
      peak = Math.max(peak, process.memoryUsage.rss());
      return Math.round(peak / 2 ** 20);
    },
  };
}

/** Median and p90 (ms unless named otherwise); null when nothing was measured. */
export interface Spread {
  median: number | null;
  p90: number | null;
}

/** Median and p90 of `values`, rounded to `digits` decimals. */
export function spread(values: readonly number[], digits = 1): Spread {
  return { median: round(median(values), digits), p90: round(quantile(values, 0.9), digits) };
}

/** Arithmetic mean; NaN when empty. */
export function mean(values: readonly number[]): number {
  return values.length === 0 ? NaN : values.reduce((a, b) => a + b, 0) / values.length;
}

/** One sample of a Prometheus text exposition: `name{label="value",...} value`. */
export interface MetricSample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** The samples of a Prometheus text exposition (comments and unparsable lines are skipped). */
export function parseMetrics(text: string): MetricSample[] {
  const samples: MetricSample[] = [];
  for (const line of text.split("\n")) {
    const m = /^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$/.exec(line.trim());
    if (!m) continue;
    const value = Number(m[3] === "+Inf" ? Infinity : m[3] === "-Inf" ? -Infinity : m[3]);
    if (Number.isNaN(value) && m[3] !== "NaN") continue;
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) {
      labels[l[1]] = l[2].replace(/\\(.)/g, (_, c: string) => (c === "n" ? "\n" : c));
    }
    samples.push({ name: m[1], labels, value });
  }
  return samples;
}

/** Sum of the samples named `name` whose labels include every one of `labels`. */
export function metricSum(
  samples: readonly MetricSample[],
  name: string,
  labels: Record<string, string> = {},
): number {
  let sum = 0;
  for (const s of samples) {
    if (s.name !== name) continue;
    if (Object.entries(labels).every(([k, v]) => s.labels[k] === v)) sum += s.value;
  }
  return sum;
}
