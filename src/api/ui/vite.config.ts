import { fileURLToPath } from "node:url";
import { defineConfig } from "vite";

// The chat UI: plain TypeScript + DOM, bundled into dist/ui and served by the API server at `/`.
export default defineConfig({
  root: fileURLToPath(new URL(".", import.meta.url)),
  base: "./",
  logLevel: "warn",
  build: {
    outDir: fileURLToPath(new URL("../../../dist/ui", import.meta.url)),
    emptyOutDir: true,
    target: "es2022",
  },
});
