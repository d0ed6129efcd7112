/**
 * `region-vqa devices` as a separate process (it loads every llama.cpp build to see what each finds,
 * which must not happen inside the test process): what the host offers and what auto chooses, in
 * agreement with the probe the device choices themselves use.
 */
import { describe, expect, it } from "vitest";
import { hardwareGpuPresent, probeGpuDevices } from "../src/common/gpu.js";
import { planAutoDevice } from "../src/common/ort/index.js";
import type { HostDevices } from "../src/cli/commands/devices.js";
import { runCli } from "./support/run-cli.js";

describe("region-vqa devices", () => {
  it("reports providers, Vulkan devices, CUDA libraries, llama.cpp builds and the auto choices", async () => {
    const r = await runCli(["devices", "--json"]);
    expect(r.code, r.stderr).toBe(0);
    const h = JSON.parse(r.stdout) as HostDevices;
    expect(h.onnxRuntime.providers).toEqual(
      expect.arrayContaining([
        { name: "cpu", bundled: true },
        { name: "webgpu", bundled: true },
      ]),
    );
    expect(h.vulkan.devices).toEqual(probeGpuDevices().devices);
    expect(h.cudaLibraries.map((l) => l.name)).toEqual([
      "libcuda.so.1",
      "libcudart.so.13",
      "libcublas.so.13",
    ]);
    expect(h.llamaCpp.find((b) => b.build === "cpu")).toMatchObject({ loads: true });
    const plan = planAutoDevice();
    expect(h.auto.vision.device).toBe(plan.candidates[0]?.provider ?? "cpu");
    expect(h.auto.llm.gpu.startsWith("auto")).toBe(hardwareGpuPresent().present);
    // Plain text too, naming each Vulkan device.
    const text = await runCli(["devices"]);
    expect(text.code).toBe(0);
    expect(text.stdout).toContain("auto chooses");
    for (const d of h.vulkan.devices) expect(text.stdout).toContain(d.name);
  });
});
