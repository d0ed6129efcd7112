import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 120_000,
    hookTimeout: 300_000,
    // Native engines (ONNX Runtime, llama.cpp) are heavy on a 2-core machine: one file at a time.
    fileParallelism: false,
    pool: "forks",
    // All files share one process: ONNX Runtime, llama.cpp, Fastify and the tiny test models load once
    // instead of once per file (about 100 s of a 280 s run). Every file disposes of the engines,
    // servers and browsers it starts, and no test changes process-wide state it does not restore.
    isolate: false,
  },
});
