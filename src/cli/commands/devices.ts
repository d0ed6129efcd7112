import { Command } from "commander";
import { getLlama, getLlamaGpuTypes, LlamaLogLevel } from "node-llama-cpp";
import * as ort from "onnxruntime-node";
import { hardwareGpuPresent, probeGpuDevices, sharedLibraryError, type GpuDevice } from "../../common/gpu.js";
import { cudaUnavailableReason, planAutoDevice } from "../../common/ort/index.js";

/** The CUDA libraries llama.cpp's CUDA build (CUDA 13) and NVIDIA's driver provide. */
const CUDA_LIBRARIES = ["libcuda.so.1", "libcudart.so.13", "libcublas.so.13"];

export interface LlamaBuildReport {
  /** "cpu" or the GPU build's name. */
  build: string;
  loads: boolean;
  devices: string[];
  vramBytes?: { total: number; free: number };
  error?: string;
}

export interface HostDevices {
  onnxRuntime: {
    version: string;
    providers: Array<{ name: string; bundled: boolean }>;
    cudaProvider: string;
  };
  vulkan: { devices: GpuDevice[]; reason?: string };
  cudaLibraries: Array<{ name: string; found: boolean; error?: string }>;
  llamaCpp: LlamaBuildReport[];
  auto: {
    vision: { device: string; why: string };
    llm: { gpu: string; why: string };
  };
}

/** Every llama.cpp build node-llama-cpp has for this platform, loaded to see what it finds. */
async function llamaBuilds(): Promise<LlamaBuildReport[]> {
  const reports: LlamaBuildReport[] = [];
  for (const gpu of await getLlamaGpuTypes("allValid")) {
    const build = gpu === false ? "cpu" : gpu;
    try {
      const llama = await getLlama({
        gpu,
        build: "never",
        logLevel: LlamaLogLevel.disabled,
        progressLogs: false,
      });
      const devices = gpu === false ? [] : await llama.getGpuDeviceNames();
      const vram = gpu === false ? undefined : await llama.getVramState();
      reports.push({
        build,
        loads: true,
        devices,
        vramBytes: vram && vram.total > 0 ? { total: vram.total, free: vram.free } : undefined,
      });
      await llama.dispose();
    } catch (err) {
      const message = (err as Error).message.split("\n")[0];
      // node-llama-cpp says only "NoBinaryFoundError" when its prebuilt binary's libraries are missing.
      const missing =
        build === "cuda" ? CUDA_LIBRARIES.filter((l) => sharedLibraryError(l) !== undefined) : [];
      const error = /NoBinaryFound/.test(message)
        ? `its prebuilt binary does not load here${missing.length > 0 ? ` (missing ${missing.join(", ")})` : ""}`
        : message;
      reports.push({ build, loads: false, devices: [], error });
    }
  }
  return reports;
}

/** What this host offers the ONNX models and llama.cpp, and what `auto` picks for each. */
export async function hostDevices(): Promise<HostDevices> {
  const plan = planAutoDevice();
  const first = plan.candidates[0];
  const gpu = hardwareGpuPresent();
  return {
    onnxRuntime: {
      version: ort.env.versions.node ?? "unknown",
      providers: ort.listSupportedBackends().map((b) => ({ name: b.name, bundled: b.bundled })),
      cudaProvider: cudaUnavailableReason() ?? "installed",
    },
    vulkan: probeGpuDevices(),
    cudaLibraries: CUDA_LIBRARIES.map((name) => {
      const error = sharedLibraryError(name);
      return { name, found: error === undefined, ...(error ? { error } : {}) };
    }),
    llamaCpp: await llamaBuilds(),
    auto: {
      vision: first
        ? { device: first.provider, why: first.adapter ?? "its provider is installed" }
        : { device: "cpu", why: plan.skipped.join("; ") },
      llm: gpu.present
        ? { gpu: "auto (node-llama-cpp picks CUDA, Vulkan or Metal)", why: gpu.why }
        : { gpu: "cpu", why: gpu.why },
    },
  };
}

const gib = (bytes: number) => `${(bytes / 2 ** 30).toFixed(1)} GiB`;

function text(h: HostDevices): string {
  const lines = [`ONNX Runtime ${h.onnxRuntime.version}`];
  for (const p of h.onnxRuntime.providers) {
    const note = p.name === "cuda" ? ` (${h.onnxRuntime.cudaProvider})` : "";
    lines.push(`  ${p.name.padEnd(9)} ${p.bundled ? "bundled" : "not bundled"}${note}`);
  }
  lines.push("Vulkan devices (the adapters WebGPU uses on Linux)");
  if (h.vulkan.devices.length === 0) lines.push(`  none${h.vulkan.reason ? `: ${h.vulkan.reason}` : ""}`);
  for (const d of h.vulkan.devices) {
    const kind = d.type === "cpu" ? "software (cpu)" : `${d.type} GPU`;
    lines.push(`  ${d.name}: ${kind}, vendor 0x${d.vendorId.toString(16)}, Vulkan ${d.apiVersion}`);
  }
  lines.push("CUDA libraries");
  for (const l of h.cudaLibraries) lines.push(`  ${l.name.padEnd(16)} ${l.found ? "found" : "missing"}`);
  lines.push("llama.cpp builds (node-llama-cpp)");
  for (const b of h.llamaCpp) {
    if (!b.loads) lines.push(`  ${b.build.padEnd(7)} does not load: ${b.error}`);
    else if (b.build === "cpu") lines.push(`  ${b.build.padEnd(7)} loads`);
    else {
      const vram = b.vramBytes ? `, ${gib(b.vramBytes.free)} free of ${gib(b.vramBytes.total)}` : "";
      lines.push(
        `  ${b.build.padEnd(7)} loads, ${b.devices.length > 0 ? b.devices.join(", ") : "no GPU device"}${vram}`,
      );
    }
  }
  lines.push("auto chooses");
  lines.push(`  vision models: ${h.auto.vision.device} (${h.auto.vision.why})`);
  lines.push(`  LLM:           ${h.auto.llm.gpu} (${h.auto.llm.why})`);
  return `${lines.join("\n")}\n`;
}

/** `region-vqa devices`: what this host offers and what `--device auto` / `--gpu auto` would choose. */
export function register(program: Command): void {
  program
    .command("devices")
    .description("list GPUs, ONNX Runtime providers and llama.cpp builds, and what auto would choose")
    .option("--json", "print JSON")
    .action(async (opts: { json?: boolean }) => {
      const h = await hostDevices();
      process.stdout.write(opts.json ? `${JSON.stringify(h, null, 2)}\n` : text(h));
    });
}
