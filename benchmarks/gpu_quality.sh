#!/usr/bin/env bash
# One prepared GPU run of the quality grid's first cell (issue 11 §5): on one
# GPU, regenerate Beauty once, then SASRec original / DR4SR / DR4SR+ with BCE
# and CE, seed 1, each to early stopping, recording every run (device name
# included) in benchmarks/results/quality.jsonl. Budget: under nine minutes on
# an H200. Never called by a test.
#
# Run it through the device tool (one call, then give the machine back):
#   here:   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#             --dest .whl polars pydantic pydantic-core annotated-types typing-inspection \
#             pydantic-settings python-dotenv            # what the device image lacks
#           mkdir -p .gl && cp ../shared/data/amazon-beauty.txt .gl/   # carried, never committed
#   device: run(command="bash benchmarks/gpu_quality.sh .gl/amazon-beauty.txt", carry=[".whl", ".gl"], timeout_s=600)
#   the CE grid's three seeds at once: run(command="SEEDS=1,2,3 LOSSES=ce bash benchmarks/gpu_quality.sh ...", ...)
#   then copy $OUT/quality.jsonl's lines and $OUT/per_user*.npz into benchmarks/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data/amazon-beauty.txt}"
PY="${PYTHON:-python3}"
OUT_DIR="${OUT:-benchmarks/out/gpu}"
mkdir -p "$OUT_DIR"

if ! "$PY" -c "import polars, pydantic, pydantic_settings" 2>/dev/null; then
  "$PY" -m pip install --quiet --no-index --find-links .whl polars pydantic pydantic-settings
fi
if [ "${DEVICE:-cuda}" = cuda ]; then
  "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
fi

export DR4SR_QUALITY_RESULTS="$PWD/benchmarks/out/gpu-results/benchmarks/results"
mkdir -p "$DR4SR_QUALITY_RESULTS"
# SEEDS (default 1) and LOSSES (default bce,ce) widen the grid; with several
# seeds each seed runs as its own process on the same GPU (the regeneration is
# made once under the cache's file lock). BUDGET_S (default 540) ends the runs
# still going so that the finished ones come back inside one device call.
# QUALITY_ARGS is passed on to quality.py (DEVICE=cpu QUALITY_ARGS="--epochs 2
# --regenerator-epochs 1 --pretrain-epochs 1" checks the script on a CPU).
SEEDS="${SEEDS:-1}"
LOSSES="${LOSSES:-bce,ce}"
GRID="$DATA x sasrec x original,dr4sr,dr4sr+ x $LOSSES"
start=$(date +%s)
for s in ${SEEDS//,/ }; do
  timeout "${BUDGET_S:-540}" "$PY" benchmarks/quality.py --record --device "${DEVICE:-cuda}" --seeds "$s" \
    --grid "$GRID" ${QUALITY_ARGS:-} 2> "$OUT_DIR/gpu_quality-s$s.log" &
done
wait || true
echo "gpu_quality: $(( $(date +%s) - start )) s, $(wc -l < "$DR4SR_QUALITY_RESULTS/quality.jsonl" 2>/dev/null || echo 0) runs recorded"

[ -f "$DR4SR_QUALITY_RESULTS/quality.jsonl" ] || { echo "no run finished"; tail -n 5 "$OUT_DIR"/gpu_quality-s*.log; exit 1; }
cp "$DR4SR_QUALITY_RESULTS/quality.jsonl" "$OUT_DIR/quality.jsonl"
# per-user files come back flat (the device tool returns at most 8 files)
tar -C "$DR4SR_QUALITY_RESULTS" -czf "$OUT_DIR/per_user.tgz" per_user
tail -n 3 "$OUT_DIR"/gpu_quality-s*.log
