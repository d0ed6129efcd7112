import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 120_000,
    hookTimeout: 300_000,
    // Native engines (ONNX Runtime, llama.cpp) are heavy on a 2-core machine: one file at a time.
    fileParallelism: false,
    pool: "forks",
  },
});
