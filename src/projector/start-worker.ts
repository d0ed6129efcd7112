import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import { Worker, type WorkerOptions } from "node:worker_threads";
import { startSiblingWorker } from "../common/worker-url.js";

/**
 * `startSiblingWorker`, except when running from TypeScript sources (vitest, tsx): on Node 20 a worker
 * ignores `--import tsx` in its execArgv ("Unknown file extension .ts"), so the worker is started from a
 * one-line CommonJS bootstrap that registers tsx's require hook and then loads the .ts file.
 * TODO(lead): move this into src/common/worker-url.ts, then delete this file.
 */
export function startWorker(fromModuleUrl: string, baseName: string, options: WorkerOptions = {}): Worker {
  if (!fromModuleUrl.endsWith(".ts")) return startSiblingWorker(fromModuleUrl, baseName, options);
  const require = createRequire(import.meta.url);
  const tsxApi = require.resolve("tsx/cjs/api");
  const file = fileURLToPath(new URL(`./${baseName}.ts`, fromModuleUrl));
  const code = `require(${JSON.stringify(tsxApi)}).register();\nrequire(${JSON.stringify(file)});`;
  return new Worker(code, { ...options, eval: true });
}
