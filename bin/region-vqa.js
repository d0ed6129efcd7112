#!/usr/bin/env node
// The `region-vqa` command. It runs the compiled CLI from dist/ (built by `npm install` / `npm run build`).
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";

const compiled = new URL("../dist/cli/index.js", import.meta.url);
if (!existsSync(fileURLToPath(compiled))) {
  console.error("region-vqa: dist/ is missing; run `npm run build` in the package folder first.");
  process.exit(1);
}
const { main } = await import(compiled.href);
process.exitCode = await main(process.argv);
