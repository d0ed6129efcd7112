/**
 * The GPU code path runs in CI: on a machine without a WebGPU adapter the GPU tests fail under
 * `CI=true` (scripts/setup.sh installs Mesa's lavapipe there) and are skipped elsewhere, saying why.
 */
import { preferredGpuDevice, probeGpuDevices, type GpuDevice } from "../../src/common/gpu.js";

export const gpuAdapter: GpuDevice | undefined = preferredGpuDevice(probeGpuDevices().devices);

/** Why the GPU tests cannot run here, or undefined when they can. */
export const noGpuReason: string | undefined = gpuAdapter
  ? undefined
  : `no Vulkan device for WebGPU (${probeGpuDevices().reason ?? "none found"}); install one, e.g. Mesa's lavapipe: scripts/setup.sh`;

/** Skip (outside CI) or fail (in CI) when there is no adapter. */
export const requireGpu = {
  skip: noGpuReason !== undefined && !process.env.CI,
  failInCi: noGpuReason !== undefined && Boolean(process.env.CI),
};
