#!/usr/bin/env bash
# GPU host check for region-vqa: what the host offers (region-vqa devices: Vulkan devices for WebGPU,
# ONNX Runtime providers, CUDA libraries, llama.cpp builds); do the encoder's WebGPU (and, when ONNX
# Runtime's CUDA provider is installed, CUDA) features agree with the CPU's, and how fast is each; does
# one question answer end to end with both stages on auto. CUDA is optional: WebGPU needs only a Vulkan
# driver. Usage: scripts/gpu-check.sh [--model NAME|DIR] (default: the bundled model).
# Exit 0 = everything passed; 1 = a check failed (each failure is printed with what to do).
set -uo pipefail
cd "$(dirname "$0")/.."
fail=0
say() { printf '%s\n' "$*"; }

say "== GPU"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || fail=1
else
  say "nvidia-smi not found: no NVIDIA driver (WebGPU and Vulkan can still use another GPU)"
fi

say "== what this host offers, and what auto chooses"
node bin/region-vqa.js devices || fail=1

say "== encoder on the CPU, WebGPU (and CUDA), and one question end to end"
node --import tsx scripts/gpu-check.ts "$@" || fail=1

[ "$fail" = 0 ] && say "gpu-check: all checks passed" || say "gpu-check: some checks FAILED (see above)"
exit "$fail"
