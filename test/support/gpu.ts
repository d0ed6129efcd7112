/**
 * The GPU code path runs in CI: on a machine without a WebGPU adapter the GPU tests fail under
 * `CI=true` (scripts/setup.sh installs Mesa's lavapipe there) and are skipped elsewhere, saying why.
 */
import { describe, it } from "vitest";
import { preferredGpuDevice, probeGpuDevices, type GpuDevice } from "../../src/common/gpu.js";

export const gpuAdapter: GpuDevice | undefined = preferredGpuDevice(probeGpuDevices().devices);

/** Why the GPU tests cannot run here, or undefined when they can. */
const noGpuReason: string | undefined = gpuAdapter
  ? undefined
  : `no Vulkan device for WebGPU (${probeGpuDevices().reason ?? "none found"}); install one, e.g. Mesa's lavapipe: scripts/setup.sh`;

/** A suite that needs a WebGPU adapter: run it, or fail in CI, or skip elsewhere, saying why. */
export function describeWithGpu(title: string, body: () => void): void {
  if (noGpuReason && process.env.CI) {
    it(`${title}: CI has a WebGPU adapter`, () => {
      throw new Error(`CI must run the GPU code path, but ${noGpuReason}`);
    });
    return;
  }
  describe.skipIf(noGpuReason !== undefined)(`${title} (${gpuAdapter?.name ?? noGpuReason})`, body);
}
