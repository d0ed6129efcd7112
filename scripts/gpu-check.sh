#!/usr/bin/env bash
# GPU host check for region-vqa: are the CUDA libraries that ONNX Runtime and llama.cpp need present;
# do the encoder's CUDA and CPU features agree (and how fast is each); does one question answer end to
# end on the GPU. Usage: scripts/gpu-check.sh [--model NAME|DIR] (default: the bundled model).
# Exit 0 = everything passed; 1 = a check failed (each failure is printed with what to do).
set -uo pipefail
cd "$(dirname "$0")/.."
fail=0
say() { printf '%s\n' "$*"; }

say "== GPU"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || fail=1
else
  say "nvidia-smi not found: no NVIDIA driver on this host"; fail=1
fi

say "== CUDA libraries (searched in LD_LIBRARY_PATH, CUDA_PATH and the linker cache)"
find_lib() {
  local name=$1 dirs
  dirs="${LD_LIBRARY_PATH:-}:${CUDA_PATH:+$CUDA_PATH/lib64}:${CUDA_PATH:+$CUDA_PATH/lib}"
  for d in ${dirs//:/ }; do [ -e "$d/$name" ] && { echo "$d/$name"; return 0; }; done
  ldconfig -p 2>/dev/null | awk -v n="$name" '$1 == n { print $NF; exit }' | grep . && return 0
  return 1
}
for lib in libcuda.so.1 libcudart.so.13 libcublas.so.13 libcudnn.so.9; do
  if where=$(find_lib "$lib"); then say "  ok   $lib  $where"; else say "  MISSING $lib"; fail=1; fi
done
ort_dir=node_modules/onnxruntime-node/bin/napi-v6/linux/x64
for lib in libonnxruntime_providers_shared.so libonnxruntime_providers_cuda.so; do
  if [ -e "$ort_dir/$lib" ]; then say "  ok   $ort_dir/$lib"
  else say "  MISSING $ort_dir/$lib (ONNX Runtime's CUDA provider: see README 'GPU hosts')"; fail=1; fi
done

say "== encoder CUDA vs CPU, and one question end to end"
node --import tsx scripts/gpu-check.ts "$@" || fail=1

[ "$fail" = 0 ] && say "gpu-check: all checks passed" || say "gpu-check: some checks FAILED (see above)"
exit "$fail"
