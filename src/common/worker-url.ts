import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import { Worker, type WorkerOptions } from "node:worker_threads";

/**
 * Start a worker whose source sits beside `fromModuleUrl`. From the compiled `dist/` it is the `.js`
 * file. When the caller runs from TypeScript sources (vitest, tsx), the `.ts` file is loaded through a
 * one-line CommonJS bootstrap that registers tsx's require hook first: Node 20 workers ignore
 * `--import tsx` in `execArgv` ("Unknown file extension .ts").
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
  const require = createRequire(import.meta.url);
  const tsxApi = require.resolve("tsx/cjs/api");
  const file = fileURLToPath(new URL(`./${baseName}.ts`, fromModuleUrl));
  const code = `require(${JSON.stringify(tsxApi)}).register();\nrequire(${JSON.stringify(file)});`;
  return new Worker(code, { ...options, eval: true });
}
