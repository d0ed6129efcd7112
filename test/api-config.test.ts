/** The server config: defaults, then file, then environment, then flags; bad values are refused. */
import { mkdtempSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { defaultConfig, loadConfig } from "../src/config.js";

describe("loadConfig", () => {
  it("layers defaults < file < environment < flags", () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), "rvqa-config-"));
    const file = path.join(dir, "server.json");
    writeFileSync(
      file,
      JSON.stringify({
        port: 9001,
        host: "0.0.0.0",
        limits: { maxRegions: 5, maxTokens: 100 },
        model: { llm: "m.gguf", vision: "v" },
      }),
    );
    const env = {
      REGION_VQA_PORT: "9002",
      REGION_VQA_MAX_TOKENS: "50",
      REGION_VQA_CORS_ORIGINS: "http://a, http://b",
    };
    const config = loadConfig({ file, env, flags: { port: 9003 } });
    expect(config.port).toBe(9003);
    expect(config.host).toBe("0.0.0.0");
    expect(config.limits.maxRegions).toBe(5);
    expect(config.limits.maxTokens).toBe(50);
    expect(config.limits.maxQuestionChars).toBe(defaultConfig.limits.maxQuestionChars);
    expect(config.corsOrigins).toEqual(["http://a", "http://b"]);
    // Model paths in a file are relative to the file.
    expect(config.model.llm).toBe(path.join(dir, "m.gguf"));
    expect(config.apiKey).toBeUndefined();
  });

  it("refuses bad values with clear messages", () => {
    expect(() => loadConfig({ env: { REGION_VQA_PORT: "eighty" } })).toThrow(
      /REGION_VQA_PORT must be a whole number/,
    );
    expect(() => loadConfig({ env: {}, flags: { port: 70000 } })).toThrow(/port must be 0..65535/);
    expect(() => loadConfig({ env: { REGION_VQA_REMOTE_IMAGE_ALLOW: "ftp://x" } })).toThrow(
      /http\(s\) URL prefixes/,
    );
    expect(() => loadConfig({ env: { REGION_VQA_LLM: "a.gguf" } })).toThrow(
      /both model.vision and model.llm/,
    );
    // An environment variable's error names the setting, not a command-line flag.
    expect(() => loadConfig({ env: { REGION_VQA_THREADS: "0" } })).toThrow(/model.visionThreads/);
    expect(() => loadConfig({ env: { REGION_VQA_THREADS: "0" } })).not.toThrow(/--threads/);
    expect(() => loadConfig({ env: { REGION_VQA_DEVICE: "tpu" } })).toThrow(/model.device must be auto/);
    // The imaging pool and encoder batching settings.
    for (const name of [
      "REGION_VQA_IMAGING_THREADS",
      "REGION_VQA_IMAGING_JOBS",
      "REGION_VQA_ENCODER_BATCH",
    ]) {
      expect(() => loadConfig({ env: { [name]: "0" } }), name).toThrow(/must be a whole number >= 1/);
      expect(() => loadConfig({ env: { [name]: "two" } }), name).toThrow(
        new RegExp(`${name} must be a whole number`),
      );
    }
    expect(() => loadConfig({ env: { REGION_VQA_ENCODER_BATCH_WAIT_MS: "-1" } })).toThrow(
      /REGION_VQA_ENCODER_BATCH_WAIT_MS must be a whole number/,
    );
    expect(() => loadConfig({ env: {}, flags: { model: { encoderBatchWaitMs: 1.5 } } })).toThrow(
      /model.encoderBatchWaitMs must be a whole number >= 0/,
    );
    expect(
      loadConfig({ env: { REGION_VQA_IMAGING_THREADS: "3", REGION_VQA_ENCODER_BATCH_WAIT_MS: "0" } }).model,
    ).toMatchObject({ imagingThreads: 3, encoderBatchWaitMs: 0 });
  });

  it("reads model settings as typed values: gpu false from the environment or a file", () => {
    expect(loadConfig({ env: { REGION_VQA_GPU: "false" } }).model.gpu).toBe(false);
    expect(loadConfig({ env: { REGION_VQA_GPU: "vulkan", REGION_VQA_THREADS: "3" } }).model).toMatchObject({
      gpu: "vulkan",
      visionThreads: 3,
    });
    expect(() => loadConfig({ env: { REGION_VQA_GPU: "maybe" } })).toThrow(/model.gpu must be/);
    // Unset settings stay unset: the pipeline's defaults apply (an env var or file can still set them).
    expect(loadConfig({ env: {} }).model).toEqual({});
  });
});
