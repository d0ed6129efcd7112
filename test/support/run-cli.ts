import { spawn, type ChildProcess } from "node:child_process";
import { readdirSync, statSync } from "node:fs";
import path from "node:path";
import { repoRoot } from "./tiny-models.js";

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export interface CliOptions {
  /** Added to this process's environment. */
  env?: NodeJS.ProcessEnv;
  /** Killed after this long (default 120 s). */
  timeoutMs?: number;
}

/** The TypeScript files under `dir` (recursively), minus the `skip` folders. */
function sourceFiles(dir: string, skip: string[]): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (skip.includes(full)) continue;
    if (entry.isDirectory()) out.push(...sourceFiles(full, skip));
    else if (entry.name.endsWith(".ts")) out.push(full);
  }
  return out;
}

let command: string[] | undefined;

/**
 * How the tests start `region-vqa`: `bin/region-vqa.js` over the compiled dist/ (what users run, and
 * seconds faster per process) when dist/ was built after the last change to the sources, as after
 * `npm ci` or `npm run build`; otherwise the TypeScript sources through tsx, so a stale dist/ never
 * answers for edited sources.
 */
export function cliCommand(): string[] {
  if (command) return command;
  const src = path.join(repoRoot, "src");
  let fresh = false;
  try {
    // Every source file must have its compiled twin, written after the newest source change.
    const sources = sourceFiles(src, [path.join(src, "api", "ui")]);
    const newestSource = Math.max(...sources.map((f) => statSync(f).mtimeMs));
    const built = sources.map(
      (f) => statSync(path.join(repoRoot, "dist", path.relative(src, f).replace(/\.ts$/, ".js"))).mtimeMs,
    );
    fresh = Math.min(...built) >= newestSource;
  } catch {
    fresh = false; // a compiled file is missing
  }
  command = fresh
    ? [path.join(repoRoot, "bin/region-vqa.js")]
    : ["--import", "tsx", path.join(repoRoot, "test/support/cli-entry.ts")];
  return command;
}

/** Starts `region-vqa <args>` as a separate process (see `cliCommand`). */
export function spawnCli(args: string[], options: CliOptions = {}): ChildProcess {
  return spawnNode([...cliCommand(), ...args], options);
}

/** Runs `region-vqa <args>` as a separate process and collects its output. */
export function runCli(args: string[], options: CliOptions = {}): Promise<CliResult> {
  return runNode([...cliCommand(), ...args], options);
}

/** Starts `node <nodeArgs>` in the repository root. */
function spawnNode(nodeArgs: string[], options: CliOptions): ChildProcess {
  return spawn(process.execPath, nodeArgs, {
    cwd: repoRoot,
    env: { ...process.env, ...options.env },
    stdio: ["ignore", "pipe", "pipe"],
  });
}

/** Runs `node <nodeArgs>` (e.g. a script under test/support through tsx) and collects its output. */
export function runNode(nodeArgs: string[], options: CliOptions = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawnNode(nodeArgs, options);
    let stdout = "";
    let stderr = "";
    child.stdout!.on("data", (d: Buffer) => (stdout += d.toString("utf8")));
    child.stderr!.on("data", (d: Buffer) => (stderr += d.toString("utf8")));
    const timer = setTimeout(() => child.kill("SIGKILL"), options.timeoutMs ?? 120_000);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}
