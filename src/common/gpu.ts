/**
 * What GPUs this host has, as Vulkan sees them (native/gpu_probe.cc). On Linux these are the adapters
 * WebGPU (Dawn inside ONNX Runtime) and llama.cpp's Vulkan backend choose from, and each says whether
 * it is real hardware or a software rasteriser (lavapipe/llvmpipe and SwiftShader are "cpu" devices),
 * which `auto` device choices must never take on their own.
 */
import { createRequire } from "node:module";

export type GpuDeviceType = "discrete" | "integrated" | "virtual" | "cpu" | "other";

export interface GpuDevice {
  name: string;
  vendorId: number;
  deviceId: number;
  type: GpuDeviceType;
  /** The Vulkan API version the driver offers, e.g. "1.3.280". */
  apiVersion: string;
}

export interface GpuProbe {
  devices: GpuDevice[];
  /** Why the list is empty or may be incomplete. */
  reason?: string;
}

const PROBE_ADDON = "../../build/Release/region_vqa_gpu_probe.node";
let cached: GpuProbe | undefined;

/** This host's Vulkan devices (probed once per thread). */
export function probeGpuDevices(): GpuProbe {
  if (cached) return cached;
  if (process.platform !== "linux") {
    cached = {
      devices: [],
      reason: `the Vulkan device probe runs on Linux only (this is ${process.platform})`,
    };
    return cached;
  }
  let probe: { vulkanDevices(): GpuProbe };
  try {
    probe = createRequire(import.meta.url)(PROBE_ADDON) as typeof probe;
  } catch (err) {
    cached = {
      devices: [],
      reason: `the GPU probe addon is not built (npm run build:native): ${(err as Error).message.split("\n")[0]}`,
    };
    return cached;
  }
  cached = probe.vulkanDevices();
  return cached;
}

export const isSoftwareDevice = (d: GpuDevice): boolean => d.type === "cpu";

const preference: GpuDeviceType[] = ["discrete", "integrated", "virtual", "other", "cpu"];

/** The device a GPU runtime would pick: the most capable kind first (a software one only when alone). */
export function preferredGpuDevice(devices: readonly GpuDevice[]): GpuDevice | undefined {
  return [...devices].sort((a, b) => preference.indexOf(a.type) - preference.indexOf(b.type))[0];
}

/** "llvmpipe (LLVM 15.0.6, 256 bits), a software (cpu) device" and the like, for logs and errors. */
export function describeGpuDevice(d: GpuDevice): string {
  return isSoftwareDevice(d) ? `${d.name}, a software device` : `${d.name}, ${d.type} GPU`;
}
