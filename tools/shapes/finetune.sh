#!/usr/bin/env bash
# The CPU fine-tune that turns the GPU run (train-device.sh output, $1) into the shipped model: the
# LM learns yes/no (scaffolded comparison) and follow-up turns on cached image tokens, with layer 0
# frozen and a pool of whole-image scenes so that counting keeps its accuracy; then the export to
# models/shapes (or $2). Every draw is seeded. About 25 min on this 2-core CPU (tools/shapes/README.md).
set -euo pipefail
src=${1:-tools/shapes/out/run1}
dest=${2:-models/shapes}
out=tools/shapes/out
ft="/usr/bin/python3 tools/shapes/finetune_cached.py"
cache=$out/cache/regions-11-2000.pt
mkdir -p "$out/cache"
# Image tokens of 2000 training regions (scene seed 1) and 120 held-out ones (scene seed 5000); the
# whole-image pools (3000 + 300 held-out, scene seeds 1 and 6000) are built by the runs below.
[ -f "$cache" ] || $ft --src "$src" --out "$out/cache" --cache "$cache" --regions 2000 --eval-regions 120 --seed 11 --cache-only
common=(--cache "$cache" --regions 2000 --count-regions 3000 --count-share 0.1 --yes-no verdict-first
  --followup 0.3 --probe-weight 1.0 --probe-layer 2 --attn-weight 1.0 --attn-layer 1 --attn-head 0
  --freeze layers.0 --batch 32 --threads 1)
# 500 steps from the GPU run (~21 min with 1 thread).
$ft --src "$src" --out "$out/ft-yn3" "${common[@]}" --steps 500 --lr 5e-4 --warmup 20 --eval-every 125 --seed 23
npx tsx tools/shapes/export.ts "$out/ft-yn3" "$dest"
