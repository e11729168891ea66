"""Hybrid-inference speed: batched decoding versus the reference's one-at-a-time loop.

Trains a regenerator for a few epochs on the dataset's pre-training pairs (so
output lengths are realistic; or loads one with ``--model``), decodes every
user x every memory with :func:`models.decoding.decode`, then decodes a
random sample of the same rows with :func:`models.decoding.decode_reference`
(batch of one, no cache, full decoder re-run per step, under no_grad) and
checks that both produce identical sequences.

Last stdout line: one JSON object with batched_per_s, batch1_per_s, speedup,
mean_len and equal.

    .venv/bin/python benchmarks/decoding.py --dataset ../shared/data/amazon-beauty.txt
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from regenerator_train import build_dataset_pairs, log

from models.decoding import decode, decode_reference, generative_schedule
from models.progress import ProgressEvent
from models.regenerator import RegeneratorConfig, load_regenerator, train_regenerator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", required=True, help="one line per user: user item item ...")
    ap.add_argument("--train-epochs", type=int, default=2)
    ap.add_argument("--sample", type=int, default=300, help="rows decoded by the reference loop")
    ap.add_argument("--batch-size", type=int, default=512, help="sources per batch (rows = x K)")
    ap.add_argument("--profile", choices=("parity", "fixed"), default="parity")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--model", default=None, help="load this saved regenerator instead of training")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    split, src, tgt, n_items, _ = build_dataset_pairs(args.dataset)
    make = RegeneratorConfig.parity if args.profile == "parity" else RegeneratorConfig.fixed
    config = make(epochs=args.train_epochs, device=args.device)
    if args.model:
        model = load_regenerator(args.model, device=None if args.device == "auto" else args.device)
        log(f"loaded {args.model}")
    else:
        t = time.perf_counter()
        model = train_regenerator(src, tgt, n_items, config)
        log(f"trained {args.train_epochs} epochs on {len(src)} pairs in {time.perf_counter() - t:.1f}s")
    sources = split.pair_source

    def progress(event: ProgressEvent) -> None:
        if event.done == event.total or event.done % (20 * args.batch_size) < args.batch_size:
            log(f"decode: {event.done}/{event.total} users")

    t = time.perf_counter()
    decoded = decode(model, sources, config, batch_size=args.batch_size, progress=progress)
    batched_s = time.perf_counter() - t
    log(f"batched: {len(decoded)} decodes in {batched_s:.1f}s")

    sched = generative_schedule(len(decoded), config)
    rows = np.sort(np.random.default_rng(0).choice(len(decoded), size=min(args.sample, len(decoded)),
                                                   replace=False))
    mismatches = 0
    t = time.perf_counter()
    for j, r in enumerate(rows):
        ref = decode_reference(model, sources[decoded.source_index[r]], int(decoded.memory[r]),
                               sched[r], config)
        mismatches += ref != decoded.seqs[r].tolist()
        if (j + 1) % 100 == 0:
            log(f"reference: {j + 1}/{len(rows)}")
    ref_s = time.perf_counter() - t
    batched_per_s = len(decoded) / batched_s
    batch1_per_s = len(rows) / ref_s
    lengths = decoded.seqs.lengths
    print(json.dumps({
        "dataset": Path(args.dataset).name,
        "profile": args.profile,
        "device": str(model.embedding.weight.device),
        "threads": torch.get_num_threads(),
        "train_epochs": 0 if args.model else args.train_epochs,
        "users": len(sources),
        "memories": model.config.num_memories,
        "decodes": len(decoded),
        "batched_s": round(batched_s, 2),
        "batched_per_s": round(batched_per_s, 1),
        "sample": len(rows),
        "batch1_s": round(ref_s, 2),
        "batch1_per_s": round(batch1_per_s, 2),
        "speedup": round(batched_per_s / batch1_per_s, 2),
        "mean_len": round(float(lengths.mean()), 3),
        "length_counts": {int(k): int(v) for k, v in zip(*np.unique(lengths, return_counts=True),
                                                           strict=True)},
        "equal": mismatches == 0,
        "mismatches": int(mismatches),
    }))


if __name__ == "__main__":
    sys.exit(main())
