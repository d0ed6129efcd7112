import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { Worker, type WorkerOptions } from "node:worker_threads";

/**
 * Start a worker whose source sits beside `fromModuleUrl`. From the compiled `dist/` it is the `.js`
 * file; when the caller runs from TypeScript sources (tests, `tsx`), the `.ts` file is loaded through
 * tsx's loader so that both ways of running share one code path.
 */
export function startSiblingWorker(
  fromModuleUrl: string,
  baseName: string,
  options: WorkerOptions = {},
): Worker {
  const js = new URL(`./${baseName}.js`, fromModuleUrl);
  if (!fromModuleUrl.endsWith(".ts") && existsSync(fileURLToPath(js))) {
    return new Worker(js, options);
  }
  const ts = new URL(`./${baseName}.ts`, fromModuleUrl);
  return new Worker(ts, { ...options, execArgv: [...(options.execArgv ?? []), "--import", "tsx"] });
}
