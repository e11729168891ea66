#!/usr/bin/env bash
# One prepared GPU run of the quality grid (issue 11 §5): on one GPU, SASRec
# original / DR4SR / DR4SR+ to early stopping, every run recorded (device name
# included) in a JSONL that comes back through $OUT. Never called by a test.
#
#   gpu_quality.sh DATASET [DATASET ...]
#
# Environment (all optional):
#   SEEDS       training seeds, default 1; each (dataset, seed) is its own
#               process on the same GPU. The full softmax keeps an H200 busy:
#               measured 2026-12-04, seven processes held it at 99 % and a
#               Beauty original took 2.3 s an epoch (130-145 s to early
#               stopping), DR4SR 12 s; three DR4SR processes alone 8 s an
#               epoch each. Beauty's three DR4SR seeds need about 6 minutes,
#               so a 15-minute lease fits one dataset's DR4SR arm, not more
#   LOSSES      default bce,ce
#   ARMS        default original,dr4sr,dr4sr+ (run in this order per process);
#               with a softmax loss the dr4sr arm runs the loss filter (the
#               row_filter 'auto' default), scoring with the original arm of
#               its seed (kept by quality.py; without the original arm, one
#               more original run is trained as the scorer);
#               QUALITY_ARGS="--train-set row_filter=none" gives plain DR4SR
#   PERS_ARGS   quality.py arguments for the DR4SR+ arm only (the
#               personalizer settings and their --tag)
#   REGEN_FROM  a folder of regenerations made elsewhere (quality.py's cache
#               layout: <stem>-<key>/{regenerated.npz,stats.json,config.json});
#               without it each dataset is regenerated here, once, under the
#               cache's file lock
#   BUDGET_S    default 540: runs still going then are ended, so that the
#               finished ones come back inside one device call
#   THREADS     torch CPU threads per process, default 2
#   EXTRA_GRID  one more quality.py --grid (e.g. other models), run as one
#               more process with seeds EXTRA_SEEDS (default 1)
#   DR4SR_COMMIT the commit to record: the copy on a device machine has no
#               .git (pass `git rev-parse --short HEAD` from here)
#   QUALITY_ARGS passed to every quality.py call (DEVICE=cpu QUALITY_ARGS="--epochs 2
#               --regenerator-epochs 1 --pretrain-epochs 1" checks the script on a CPU)
#
# Packages the device image lacks travel in .whl/ (see the device README):
# wheels are installed with pip --target, and any .whl/*.tar.xz (an unpacked
# wheel, smaller than the zip: polars' runtime) is unpacked beside them.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || set -- ../shared/data/amazon-beauty.txt
PY="${PYTHON:-python3}"
OUT_DIR="${OUT:-benchmarks/out/gpu}"
mkdir -p "$OUT_DIR"
DEVICE="${DEVICE:-cuda}"

if ! "$PY" -c "import polars, pydantic, pydantic_settings" 2>/dev/null; then
  SITE=/tmp/dr4sr-site
  mkdir -p "$SITE"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
  for t in .whl/*.tar.xz; do [ -e "$t" ] && tar -xJf "$t" -C "$SITE"; done
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  "$PY" -c "import polars, pydantic, pydantic_settings"
fi
if [ "$DEVICE" = cuda ]; then
  "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0), torch.__version__)"
fi

export DR4SR_QUALITY_RESULTS="$PWD/benchmarks/out/gpu-results/benchmarks/results"
mkdir -p "$DR4SR_QUALITY_RESULTS"
if [ -n "${REGEN_FROM:-}" ]; then
  mkdir -p benchmarks/out/gpu-results/benchmarks/out/regen
  cp -r "$REGEN_FROM"/. benchmarks/out/gpu-results/benchmarks/out/regen/
  ls benchmarks/out/gpu-results/benchmarks/out/regen
fi

SEEDS="${SEEDS:-1}"
LOSSES="${LOSSES:-bce,ce}"
ARMS="${ARMS:-original,dr4sr,dr4sr+}"
PLAIN_ARMS=$(echo "$ARMS" | tr ',' '\n' | grep -vx 'dr4sr+' | paste -sd, || true)
Q=("$PY" benchmarks/quality.py --record --device "$DEVICE" --threads "${THREADS:-2}")

one() {  # one dataset and seed: the plain arms, then DR4SR+ with PERS_ARGS
  local data=$1 seed=$2
  if [ -n "$PLAIN_ARMS" ]; then
    "${Q[@]}" --seeds "$seed" --grid "$data x sasrec x $PLAIN_ARMS x $LOSSES" ${QUALITY_ARGS:-}
  fi
  if [[ ",$ARMS," == *",dr4sr+,"* ]]; then
    "${Q[@]}" --seeds "$seed" --grid "$data x sasrec x dr4sr+ x $LOSSES" ${PERS_ARGS:-} ${QUALITY_ARGS:-}
  fi
}

start=$(date +%s)
for data in "$@"; do
  for s in ${SEEDS//,/ }; do
    name="$(basename "${data%.*}")-s$s"
    timeout "${BUDGET_S:-540}" bash -c "$(declare -f one); $(declare -p Q PLAIN_ARMS ARMS LOSSES); one '$data' '$s'" \
      > "$OUT_DIR/gpu_quality-$name.jsonl.log" 2> "$OUT_DIR/gpu_quality-$name.log" &
  done
done
if [ -n "${EXTRA_GRID:-}" ]; then
  timeout "${BUDGET_S:-540}" "${Q[@]}" --seeds "${EXTRA_SEEDS:-1}" --grid "$EXTRA_GRID" ${QUALITY_ARGS:-} \
    > "$OUT_DIR/gpu_quality-extra.jsonl.log" 2> "$OUT_DIR/gpu_quality-extra.log" &
fi
wait || true
runs=$(wc -l < "$DR4SR_QUALITY_RESULTS/quality.jsonl" 2>/dev/null || echo 0)
echo "gpu_quality: $(( $(date +%s) - start )) s, $runs runs recorded"

# what comes back (the device tool returns at most 8 files): the JSONL, the
# per-user metrics and the logs, each bundle flat under $OUT_DIR
tar -C "$OUT_DIR" -czf "$OUT_DIR/logs.tgz" --remove-files $(cd "$OUT_DIR" && ls gpu_quality-*.log)
[ -f "$DR4SR_QUALITY_RESULTS/quality.jsonl" ] || { echo "no run finished"; tar -xzOf "$OUT_DIR/logs.tgz" | tail -n 20; exit 1; }
cp "$DR4SR_QUALITY_RESULTS/quality.jsonl" "$OUT_DIR/quality.jsonl"
tar -C "$DR4SR_QUALITY_RESULTS" -czf "$OUT_DIR/per_user.tgz" per_user
"$PY" - "$OUT_DIR/quality.jsonl" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    p = (r.get("p_vs_original") or {}).get("t_p")
    print(r["dataset"], r["model"], r["variant"], r.get("tag") or "", r["loss"], f"s{r['seed']}", r["stopped"], r["epochs"], f"{r['seconds']}s",
          f"ndcg@20={r['test']['ndcg@20']:.4f}", "" if p is None else f"p={p:.3g}")
EOF
