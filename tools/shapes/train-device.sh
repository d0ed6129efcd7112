#!/usr/bin/env bash
# The training run that produced the shipped models/shapes-* files, on a GPU host (16 cores make the
# data; the GPU trains). Needs tools/shapes/out/{tokens.json,pieces.json} (see README). Writes to $1.
set -uo pipefail
out=${1:-tools/shapes/out/run}
mkdir -p "$out"
if ! python3 -c "import PIL, numpy, torch" 2>/dev/null; then
  # Hosts without Pillow: use the copy of Debian's Pillow 9.4 carried in tools/shapes/out/pydeps.
  export PYTHONPATH=$PWD/tools/shapes/out/pydeps LD_LIBRARY_PATH=$PWD/tools/shapes/out/pydeps/lib:${LD_LIBRARY_PATH:-}
fi
python3 -c "import PIL, numpy, torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'pillow', PIL.__version__, 'numpy', numpy.__version__, 'cuda', torch.cuda.is_available())"
workers=$(( $(nproc --all) - 2 ))  # before OMP_NUM_THREADS: nproc obeys it
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
python3 tools/shapes/train.py train --device cuda --workers "$workers" --threads 2 --out "$out" --max-minutes "${MAX_MINUTES:-7}" 2>&1 | grep -v Warning
python3 tools/shapes/train.py eval --device cuda --scenes 300 --seed 1000 --whole-colour --out "$out"
python3 tools/shapes/train.py eval --device cuda --scenes 300 --seed 2000 --out "$out"
