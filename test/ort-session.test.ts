/**
 * `OnnxSession`, the one runner every ONNX model uses: the same answers on a worker thread and on the
 * calling thread, runs answered in order, typed errors, and a shutdown that never tears a thread down
 * under a native run. The model is the golden tiny projector (64 -> 96 -> 96) built as ONNX in memory.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import type { Worker } from "node:worker_threads";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { encodeOnnxModel } from "../src/common/onnx/index.js";
import { OnnxSession } from "../src/common/ort/index.js";
import { runError } from "../src/common/ort/session.js";
import { maxAbsDiff } from "../src/common/tensor.js";
import {
  buildProjectorModel,
  loadProjectorWeights,
  projectReference,
  type ProjectorWeights,
} from "../src/projector/index.js";
import { goldenDir } from "./support/tiny-models.js";

const code = (c: string) => expect.objectContaining({ code: c });
let weights: ProjectorWeights;
let modelBytes: Uint8Array;
let tmp: string;
let modelFile: string;

beforeAll(async () => {
  weights = await loadProjectorWeights(path.join(goldenDir, "llava-projector-tiny/tiny-mmproj-f16.gguf"));
  modelBytes = encodeOnnxModel(buildProjectorModel(weights));
  tmp = mkdtempSync(path.join(tmpdir(), "rvqa-ort-"));
  modelFile = path.join(tmp, "projector.onnx");
  writeFileSync(modelFile, modelBytes);
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** Seeded features [1, tokens, 64]. */
function features(tokens: number, seed: number): Float32Array {
  const data = new Float32Array(tokens * weights.inWidth);
  let s = seed;
  for (let i = 0; i < data.length; i++)
    data[i] = ((s = (s * 1103515245 + 12345) & 0x7fffffff) / 2 ** 31) * 2 - 1;
  return data;
}

const open = (inWorker: boolean) =>
  OnnxSession.open(inWorker ? modelFile : modelBytes.slice(), {
    label: "test projector",
    device: "cpu",
    threads: 1,
    inWorker,
  });

describe("OnnxSession", () => {
  it("answers the same on a worker thread and on the calling thread, runs in order", async () => {
    for (const inWorker of [true, false]) {
      const session = await open(inWorker);
      try {
        expect(session.provider).toBe("cpu");
        expect(session.workerThreadId === undefined).toBe(!inWorker);
        const [input] = session.inputNames;
        const [output] = session.outputNames;
        const seeds = [1, 2, 3, 4, 5];
        // Started together, answered in order: each result belongs to its own input.
        const results = await Promise.all(
          seeds.map((seed) => session.run({ [input]: { data: features(4, seed), dims: [1, 4, 64] } })),
        );
        results.forEach((r, i) => {
          expect(r[output].dims).toEqual([1, 4, 96]);
          const ref = projectReference(weights, features(4, seeds[i]));
          expect(maxAbsDiff(r[output].data as Float32Array, ref)).toBeLessThan(1e-4);
        });
      } finally {
        await session.dispose();
      }
    }
  });

  it("copies a view into a bigger buffer instead of detaching the caller's data", async () => {
    const session = await open(true);
    try {
      const big = features(8, 9);
      const view = big.subarray(4 * 64);
      const before = Array.from(big);
      const out = await session.run({ [session.inputNames[0]]: { data: view, dims: [1, 4, 64] } });
      expect(big.length).toBe(8 * 64);
      expect(Array.from(big)).toEqual(before);
      const ref = projectReference(weights, Float32Array.from(before.slice(4 * 64)));
      expect(maxAbsDiff(out[session.outputNames[0]].data as Float32Array, ref)).toBeLessThan(1e-4);
    } finally {
      await session.dispose();
    }
  });

  it("kept tensors stay with the session: runs naming them send nothing else; dropped ones are gone", async () => {
    for (const inWorker of [true, false]) {
      const session = await open(inWorker);
      try {
        const [input] = session.inputNames;
        const [output] = session.outputNames;
        const kept = features(4, 11);
        session.keep("image-1", { [input]: { data: kept, dims: [1, 4, 64] } });
        // Moved, not copied, to the worker.
        if (inWorker) expect(kept.length).toBe(0);
        const ref = projectReference(weights, features(4, 11));
        const before = session.transfers();
        for (let i = 0; i < 3; i++) {
          const out = await session.run({}, { resident: "image-1" });
          expect(maxAbsDiff(out[output].data as Float32Array, ref)).toBeLessThan(1e-4);
        }
        const after = session.transfers();
        expect(after.runs - before.runs).toBe(3);
        expect(after.inputBytes - before.inputBytes).toBe(0);
        expect(after.keptBytes).toBe(4 * 64 * 4);
        // Inputs given with the run win over kept ones of the same name.
        const own = await session.run(
          { [input]: { data: features(4, 12), dims: [1, 4, 64] } },
          { resident: "image-1" },
        );
        expect(
          maxAbsDiff(own[output].data as Float32Array, projectReference(weights, features(4, 12))),
        ).toBeLessThan(1e-4);
        session.drop("image-1");
        await expect(session.run({}, { resident: "image-1" })).rejects.toMatchObject({
          code: "internal",
          details: { residentMissing: true },
        });
      } finally {
        await session.dispose();
      }
    }
  });

  it("dispose fails queued runs with aborted, waits for the worker, refuses later runs", async () => {
    for (const inWorker of [true, false]) {
      const session = await open(inWorker);
      const input = () => ({ [session.inputNames[0]]: { data: features(64, 3), dims: [1, 64, 64] } });
      const queued = [session.run(input()), session.run(input()), session.run(input())];
      // In-process runs already started cannot be taken back; on a worker, the owner stops waiting.
      const settled = Promise.allSettled(queued);
      await session.dispose();
      const outcomes = await settled;
      if (inWorker)
        for (const o of outcomes) expect(o).toEqual({ status: "rejected", reason: code("aborted") });
      await expect(session.run(input())).rejects.toEqual(code("aborted"));
      await session.dispose(); // idempotent
    }
  });

  it("a worker that dies rejects the pending run and every later one", async () => {
    const session = await open(true);
    // Simulates the thread dying while idle: terminating it under a native ORT run would abort the
    // whole process, which is why dispose() never does that.
    const worker = (session as unknown as { transport: { worker: Worker } }).transport.worker;
    const input = () => ({ [session.inputNames[0]]: { data: features(4, 1), dims: [1, 4, 64] } });
    const dying = worker.terminate();
    const pending = expect(session.run(input())).rejects.toEqual(code("internal"));
    await dying;
    await pending;
    await expect(session.run(input())).rejects.toThrow(/exited unexpectedly/);
    await session.dispose();
  });

  it("bad models, devices and inputs are typed errors, in both modes", async () => {
    const broken = path.join(tmp, "broken.onnx");
    writeFileSync(broken, "not an onnx model");
    for (const inWorker of [true, false]) {
      const options = { label: "broken", device: "cpu" as const, threads: 1, inWorker };
      await expect(OnnxSession.open(broken, options)).rejects.toEqual(code("model_invalid"));
      await expect(OnnxSession.open(path.join(tmp, "missing.onnx"), options)).rejects.toEqual(
        code("model_invalid"),
      );
      const cuda = await OnnxSession.open(modelFile, { ...options, device: "cuda" }).catch((e: unknown) => e);
      expect(cuda).toEqual(code("device_unavailable"));
      expect((cuda as Error).message).toMatch(/CUDA was requested/);
      await expect(
        OnnxSession.open(modelFile, { ...options, device: "tpu" as unknown as "cpu" }),
      ).rejects.toEqual(code("invalid_request"));
      const session = await open(inWorker);
      // A wrong shape fails inside ONNX Runtime: reported, and the session keeps working.
      await expect(
        session.run({ [session.inputNames[0]]: { data: new Float32Array(10), dims: [1, 2, 5] } }),
      ).rejects.toEqual(code("internal"));
      const ok = await session.run({ [session.inputNames[0]]: { data: features(2, 1), dims: [1, 2, 64] } });
      expect(ok[session.outputNames[0]].dims).toEqual([1, 2, 96]);
      await session.dispose();
    }
  });

  it("a run that overruns its time limit fails with device_failed, and so does every later one", async () => {
    const session = await OnnxSession.open(modelFile, {
      label: "test projector",
      device: "cpu",
      threads: 1,
      runTimeoutMs: 1,
    });
    const input = () => ({ [session.inputNames[0]]: { data: features(20_000, 1), dims: [1, 20_000, 64] } });
    const first = session.run(input());
    const queued = session.run(input());
    await expect(first).rejects.toEqual(code("device_failed"));
    await expect(queued).rejects.toEqual(code("device_failed"));
    await expect(session.run(input())).rejects.toThrow(/a run on cpu did not finish within 1 ms/);
    await session.dispose();
  });

  it("a lost or out-of-memory GPU is device_failed (HTTP 503); other run failures stay internal", () => {
    const lost = runError(new Error("Device was lost: VK_ERROR_DEVICE_LOST"), "webgpu", "vision encoder");
    expect(lost.code).toBe("device_failed");
    expect(lost.message).toMatch(/vision encoder: the webgpu device failed/);
    expect(runError(new Error("CUDA error: out of memory"), "cuda", "projector").code).toBe("device_failed");
    // The same words from the CPU provider, or a caller's wrong shape on a GPU, are not a device failure.
    expect(runError(new Error("out of memory"), "cpu", "projector").code).toBe("internal");
    expect(runError(new Error("Got invalid dimensions for input"), "webgpu", "projector").code).toBe(
      "internal",
    );
  });
});
