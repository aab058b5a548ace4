#!/usr/bin/env bash
# The checks that need a GPU, in one run on a lent GPU machine (results: benchmarks/RESULTS.md).
#
#   make gpu-wheels                      # here: the wheels the GPU image lacks -> benchmarks/wheels/
#   bash benchmarks/gpu_check.sh         # there, with benchmarks/wheels carried along
#
# 1. the triton backend's tests on CUDA (conftest.py leaves TRITON_INTERPRET unset on a GPU);
# 2. benchmarks/maxsim.py in bf16: our backends, the naive einsum, PyLate, sentence-transformers,
#    late-interaction-kernels and flash-maxsim, side by side.
# Everything it prints also goes to $OUT (default benchmarks/results/).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
if compgen -G "benchmarks/wheels/*" > /dev/null; then
    # --no-deps: the image's torch, triton and transformers stay as they are.
    "$PY" -m pip install --quiet --no-deps --no-index --no-build-isolation benchmarks/wheels/* 2>&1 | tail -3
fi
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    "$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
} 2>&1 | tee "$OUT/gpu.txt"
timeout 300 "$PY" -m pytest -q -p no:cacheprovider tests/test_maxsim.py \
    -k "triton or lean or training_step or fully_masked" 2>&1 | tail -25 | tee "$OUT/gpu_tests.txt"
timeout 400 "$PY" benchmarks/maxsim.py --device cuda --out "$OUT/maxsim-cuda.json" 2>&1 | tail -60 \
    | tee "$OUT/maxsim-cuda.txt"
