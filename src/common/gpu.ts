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

interface ProbeAddon {
  vulkanDevices(): GpuProbe;
  loadError(name: string): string | undefined;
}

let addon: ProbeAddon | string | undefined;

/** The probe addon, or why it cannot be used. */
function probeAddon(): ProbeAddon | string {
  if (addon !== undefined) return addon;
  if (process.platform !== "linux") {
    addon = `the GPU probe runs on Linux only (this is ${process.platform})`;
    return addon;
  }
  try {
    addon = createRequire(import.meta.url)(PROBE_ADDON) as ProbeAddon;
  } catch (err) {
    addon = `the GPU probe addon is not built (npm run build:native): ${(err as Error).message.split("\n")[0]}`;
  }
  return addon;
}

let cached: GpuProbe | undefined;

/** This host's Vulkan devices (probed once per thread). */
export function probeGpuDevices(): GpuProbe {
  if (cached) return cached;
  const probe = probeAddon();
  cached = typeof probe === "string" ? { devices: [], reason: probe } : probe.vulkanDevices();
  return cached;
}

/** Undefined when the shared library `name` (e.g. "libcudart.so.13") loads here, else why not. */
export function sharedLibraryError(name: string): string | undefined {
  const probe = probeAddon();
  return typeof probe === "string" ? probe : probe.loadError(name);
}

export const isSoftwareDevice = (d: GpuDevice): boolean => d.type === "cpu";

const preference: GpuDeviceType[] = ["discrete", "integrated", "virtual", "other", "cpu"];

/** The device a GPU runtime would pick: the most capable kind first (a software one only when alone). */
export function preferredGpuDevice(devices: readonly GpuDevice[]): GpuDevice | undefined {
  return [...devices].sort((a, b) => preference.indexOf(a.type) - preference.indexOf(b.type))[0];
}

/** "llvmpipe (LLVM 15.0.6, 256 bits), a software device" and the like, for logs and errors. */
export function describeGpuDevice(d: GpuDevice): string {
  return isSoftwareDevice(d) ? `${d.name}, a software device` : `${d.name}, ${d.type} GPU`;
}

/**
 * Whether this host has a GPU a runtime could use: a hardware Vulkan device, or NVIDIA's driver
 * (libcuda). On systems other than Linux the runtimes decide for themselves (Metal on macOS).
 */
export function hardwareGpuPresent(): { present: boolean; why: string } {
  if (process.platform !== "linux") return { present: true, why: `${process.platform}: the runtime decides` };
  const best = preferredGpuDevice(probeGpuDevices().devices);
  if (best && !isSoftwareDevice(best)) return { present: true, why: describeGpuDevice(best) };
  if (sharedLibraryError("libcuda.so.1") === undefined)
    return { present: true, why: "NVIDIA's driver (libcuda)" };
  const software = best ? `only ${describeGpuDevice(best)}` : "no Vulkan device";
  return { present: false, why: `${software}, no NVIDIA driver` };
}
