#!/usr/bin/env bash
# The issue-11 quality grid as two background streams of one torch thread
# each (a 2-core machine). Every run already in benchmarks/results/quality.jsonl
# is skipped, so the queue can be restarted in any session until it is done:
#
#   nohup bash benchmarks/quality_queue.sh > /tmp/quality-queue.log 2>&1 &
#
# Then commit benchmarks/results/quality.jsonl, per_user/ and the output of
# `python benchmarks/quality_table.py --readme` as runs land.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
DATA="${DATA:-../shared/data}"
B="$DATA/amazon-beauty.txt"
S="$DATA/amazon-sports.txt"
mkdir -p benchmarks/out
Q=(nice -n 8 "$PY" benchmarks/quality.py --record --threads 1)

# DR4SR+ with the personalizer that separates rows (Adam, normalised weights,
# tau from 10); the `fixed` profile alone leaves every weight at 0.50.
PERS=(--pers-set 'meta_optimizer="adam"' --pers-set normalize=true --tag pers-norm-adam-tau10)

stream_bce() {
  # Sports first (Beauty's three SASRec arms are recorded); each DR4SR seed is
  # followed by its paired original so that a stopped session leaves pairs.
  for s in 1 2 3; do
    "${Q[@]}" --seeds $s --grid "$S x sasrec x dr4sr x bce"
    "${Q[@]}" --seeds $s --grid "$S x sasrec x original x bce"
  done
  "${Q[@]}" --seeds 1 --grid "$B x gru4rec,fmlp x original,dr4sr x bce"
  "${Q[@]}" --seeds 1,2,3 "${PERS[@]}" --grid "$S x sasrec x dr4sr+ x bce"
  "${Q[@]}" --seeds 1 "${PERS[@]}" --grid "$B x gru4rec,fmlp x dr4sr+ x bce"
  # levers on Beauty, seed 1 each (redecodes of the default regeneration)
  "${Q[@]}" --seeds 1 --regen-set 'regenerator={"copy_order": "forward"}' --tag copy-forward \
    --grid "$B x sasrec x dr4sr x bce"
  "${Q[@]}" --seeds 1 --regen-set 'regenerator={"original_rows": "twice"}' --tag original-rows-twice \
    --grid "$B x sasrec x dr4sr x bce"
}

stream_ce() {
  # the sampled softmax (256 shared negatives) first: a strong baseline at BCE's cost
  for s in 1 2 3; do
    "${Q[@]}" --seeds $s --grid "$B,$S x sasrec x original,dr4sr x sampled_ce"
  done
  "${Q[@]}" --seeds 1,2,3 --grid "$B x sasrec x original x ce"
  "${Q[@]}" --seeds 1,2,3 --grid "$B x sasrec x dr4sr x ce"
  "${Q[@]}" --seeds 1,2,3 "${PERS[@]}" --grid "$B x sasrec x dr4sr+ x ce"
  "${Q[@]}" --seeds 1,2,3 --grid "$S x sasrec x original x ce"
  "${Q[@]}" --seeds 1,2,3 --grid "$S x sasrec x dr4sr x ce"
  "${Q[@]}" --seeds 1,2,3 "${PERS[@]}" --grid "$S x sasrec x dr4sr+ x ce"
}

stream_bce > benchmarks/out/quality-bce.log 2>&1 &
stream_ce > benchmarks/out/quality-ce.log 2>&1 &
wait
