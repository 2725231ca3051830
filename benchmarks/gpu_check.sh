#!/usr/bin/env bash
# One-command CUDA check (budget: under 8 minutes on one GPU):
#   1. the CUDA-marked tests (NODEO on CUDA; CPU vs CUDA Dice within 0.005 on a real 2D slice pair),
#   2. NODEO 2D (160x192, 300 iterations) and 3D (160x192x144, a few iterations) timings on CUDA,
#   3. VoxelMorph training time on CUDA (OASIS-TRT 2D slices, 300 steps; skipped without the data).
# Exits 0 with a message when no CUDA device is visible. Run from anywhere:
#   bash benchmarks/gpu_check.sh            # PYTHON=... to choose the interpreter (default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: no CUDA device visible to torch ($PY); nothing to check"
    exit 0
fi
"$PY" -c 'import torch; print("gpu_check:", torch.cuda.get_device_name(0), "torch", torch.__version__)'
t0=$SECONDS
step() { echo; echo "== $* ($((SECONDS - t0)) s elapsed)"; }

step "CUDA-marked tests"
timeout 150 "$PY" -m pytest -q -m cuda -rs -s tests/test_cuda.py

step "NODEO timings on CUDA (2D: 300 iterations; 3D: 20 iterations), default and reference presets"
timeout 150 "$PY" benchmarks/nodeo_speed.py --device cuda --iterations-2d 300 --iterations-3d 20 \
    | grep -v '^[][{}]\|^ *"' || echo "gpu_check: nodeo_speed failed or timed out"

DATA="${OASIS_TRT:-../shared/data/oasis-trt}"
if [ -d "$DATA" ]; then
    step "VoxelMorph training on CUDA (300 steps)"
    OUT="$(mktemp -d /tmp/gpu_check.XXXXXX)"
    timeout 170 "$PY" benchmarks/learned_2d.py --data "$DATA" --out "$OUT" --method voxelmorph \
        --param steps=300 --param lr=1e-3 --param device=cuda \
        || echo "gpu_check: voxelmorph training failed or timed out"
else
    step "VoxelMorph training skipped: no $DATA"
fi
echo; echo "gpu_check: done in $((SECONDS - t0)) s"
