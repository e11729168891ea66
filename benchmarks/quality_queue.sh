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

stream_bce() {
  "${Q[@]}" --seeds 1,2,3 --grid "$B x sasrec x original,dr4sr,dr4sr+ x bce"
  "${Q[@]}" --seeds 1,2,3 --grid "$S x sasrec x original,dr4sr,dr4sr+ x bce"
  "${Q[@]}" --seeds 1 --grid "$B x gru4rec,fmlp x original,dr4sr,dr4sr+ x bce"
  # the batching check: uniform shuffling (the reference's) on one cell, three seeds
  "${Q[@]}" --seeds 1,2,3 --bucket-chunk 0 --grid "$B x sasrec x original x bce"
}

stream_ce() {
  "${Q[@]}" --seeds 1,2,3 --grid "$B x sasrec x dr4sr,original,dr4sr+ x ce"
  "${Q[@]}" --seeds 1,2,3 --grid "$S x sasrec x dr4sr,original,dr4sr+ x ce"
}

stream_bce > benchmarks/out/quality-bce.log 2>&1 &
stream_ce > benchmarks/out/quality-ce.log 2>&1 &
wait
