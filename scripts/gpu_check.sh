#!/usr/bin/env bash
# The GPU session's one script: parity, reduced dtypes, inference and training tables.
#
#   scripts/gpu_check.sh OUTDIR            # from the repository root, on a machine with a CUDA GPU
#
# Needs only python with torch and numpy (1.x or 2.x): no MindSpore, decord, OpenCV or
# mmaction2, no network. Writes into OUTDIR:
#   device_check.json      GPU vs CPU float32 per layer; the fast path vs the exact path per
#                          layer; logits of 8 clips in tf32 / bfloat16 / float16 (exact and
#                          fast) vs float32 (max error, top-1 agreement); ms/clip at batch 1, 16
#   bench_gpu_infer.json   float32 / tf32 / bfloat16 / float16 x exact / fast, batch 1, 16, 64
#   bench_gpu_train.json   training step (forward, loss, backward, SGD), float32 / bfloat16,
#                          exact / fast, batch 8 and 16
#   bench_gpu_graphs.json  bfloat16 / float16 fast + CUDA graphs, batch 1, 16, 64
#   bench_gpu_compile.json bfloat16 fast + torch.compile, batch 64 (last: it may be cut short)
#   gpu_check.log          everything printed
# Sized for under 8 minutes on one H100 / H200 (ITERS=10 timed steps per configuration;
# set ITERS / WARMUP to change). SMOKE=1 runs every step on the CPU at a tiny size instead
# (what the test suite does: no GPU numbers come out of it). Exit status: device_check's
# (0 parity passed, 1 failed), or 2 when no GPU is there.
set -uo pipefail
OUT="${1:?usage: scripts/gpu_check.sh OUTDIR}"
PY="${PYTHON:-python}"
ITERS="${ITERS:-10}"
WARMUP="${WARMUP:-3}"
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
: > "$LOG"
start=$(date +%s)
step() {   # step NAME COMMAND...: run, log, report its time; never stop the others
    local name="$1"; shift
    echo "== $name: $*" | tee -a "$LOG"
    local t0=$(date +%s)
    "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $(( $(date +%s) - t0 )) s (total $(( $(date +%s) - start )) s)" | tee -a "$LOG"
    return "$rc"
}
if [ "${SMOKE:-0}" = 1 ]; then
    DEVICE=cpu; SIZE=(--input-shape 1,3,8,32,32); DC=(--device cpu --frames 8 --size 64 --clips 2 --dtypes bfloat16)
    INFER=(--dtype float32,bfloat16 --batch-sizes 1,2); TRAIN=(--dtype float32 --train-batch-sizes 2)
else
    DEVICE=gpu; SIZE=(); DC=(--batch-sizes 1,16)
    INFER=(--dtype float32,tf32,bfloat16,float16 --batch-sizes 1,16,64)
    TRAIN=(--dtype float32,bfloat16 --train-batch-sizes 8,16)
    "$PY" -c "import torch, numpy; assert torch.cuda.is_available(), 'torch sees no CUDA device'; \
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'numpy', numpy.__version__, torch.cuda.get_device_name(0))" \
        2>&1 | tee -a "$LOG" || exit 2
fi

BENCH=("$PY" -m harness.bench forward --frameworks torch --device "$DEVICE" --sequential
       --warmup "$WARMUP" --iters "$ITERS" "${SIZE[@]}")
step device_check "$PY" -m harness.device_check "${DC[@]}" --iters "$ITERS" --warmup "$WARMUP" \
    --out "$OUT/device_check.json"
status=$?
step infer "${BENCH[@]}" "${INFER[@]}" --variants exact,fast --json "$OUT/bench_gpu_infer.json"
step train "${BENCH[@]}" --mode train "${TRAIN[@]}" --variants exact,fast --json "$OUT/bench_gpu_train.json"
if [ "$DEVICE" = gpu ]; then
    step cuda_graphs "${BENCH[@]}" --dtype bfloat16,float16 --variants fast+cuda_graphs --batch-sizes 1,16,64 \
        --json "$OUT/bench_gpu_graphs.json"
    # torch.compile takes a minute or more to compile this network: last, and bounded
    step compile timeout 150 "${BENCH[@]}" --dtype bfloat16 --variants fast+compile --batch-sizes 64 \
        --json "$OUT/bench_gpu_compile.json"
fi
echo "gpu_check: done in $(( $(date +%s) - start )) s; results in $OUT" | tee -a "$LOG"
exit "$status"
