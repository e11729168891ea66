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
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"

export DR4SR_QUALITY_RESULTS="$PWD/benchmarks/out/gpu-results/benchmarks/results"
mkdir -p "$DR4SR_QUALITY_RESULTS"
start=$(date +%s)
"$PY" benchmarks/quality.py --record --device cuda --seeds 1 \
  --grid "$DATA x sasrec x original,dr4sr,dr4sr+ x bce,ce" 2> "$OUT_DIR/gpu_quality.log"
echo "gpu_quality: $(( $(date +%s) - start )) s"

cp "$DR4SR_QUALITY_RESULTS/quality.jsonl" "$OUT_DIR/quality.jsonl"
# per-user files come back flat (the device tool returns at most 8 files)
tar -C "$DR4SR_QUALITY_RESULTS" -czf "$OUT_DIR/per_user.tgz" per_user
tail -n 5 "$OUT_DIR/gpu_quality.log"
