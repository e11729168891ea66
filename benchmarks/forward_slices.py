"""Epoch cost of uniformly shuffled batches with ``TrainConfig.forward_slices``.

Uniform batches (the reference's batching, ``bucket_chunk=0``) pad every row
to the batch's longest row, and a batch of 256 uniformly drawn rows nearly
always holds one long row, so most of the forward and backward works on
padding. ``forward_slices=K`` runs each batch's forward over K slices of its
rows sorted by length, each padded to its own longest row: the same rows, the
same loss and the same gradients (tests/recommenders/test_sliced_forward.py),
less work. Length bucketing (``bucket_chunk=32``) is timed beside them as the
other way to save that work, one that changes which rows share a batch.

Baseline, measured in the same run: one epoch of uniform batches in one piece
(``forward_slices=1``). Each setting trains one epoch through the real trainer
(``models.training.train_model``) in this process, one after the other on the
same rows and seed; the training part of the epoch is timed (validation runs
on a fixed sample of 256 users and is not counted), on the wall clock and as
process CPU time.

Training rows: the original rows of the leave-one-out split, plus (unless
``--no-patterns``) the mined pattern rows and ``--regenerated`` stand-in
regenerated rows (2-4 item windows of users' rows, the shape of a regenerated
file; ``benchmarks/personalizer_cost.py``), the composition of a DR4SR
training file. The default 28,134 is the row count of the recorded Beauty
regeneration (benchmarks/results/quality.jsonl).

    python benchmarks/forward_slices.py --dataset ../shared/data/amazon-beauty.txt

Progress goes to stderr; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from personalizer_cost import read_sequences, standin_regenerated  # noqa: E402

from models.data.split import leave_one_out  # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load(args: argparse.Namespace):
    seqs = read_sequences(args.dataset)
    split = leave_one_out(seqs, max_len=args.max_len)
    train = split.train
    info = {"original_rows": len(train), "pattern_rows": 0, "regenerated_rows": 0}
    if args.patterns:
        from models.patterns import mine_patterns, pattern_rows

        patterns = pattern_rows(mine_patterns(split.mining, alpha=5, beta=2))
        train = train.concat(patterns)
        info["pattern_rows"] = len(patterns)
        if args.regenerated:
            train = train.concat(standin_regenerated(split.train, args.regenerated, args.seed))
            info["regenerated_rows"] = args.regenerated
    return split, train, int(seqs.items.max()), info


def one_epoch(split, train, num_items: int, args: argparse.Namespace, slices: int, bucket: int) -> dict:
    from models.training import TrainConfig, train_model

    marks: dict[str, tuple[float, float]] = {}

    def progress(event) -> None:  # noqa: ANN001
        if event.stage == "train" and event.done == 1:
            marks["first"] = (time.perf_counter(), time.process_time())
        if event.stage == "train" and event.done == event.total:
            marks["end"] = (time.perf_counter(), time.process_time())

    cfg = TrainConfig(
        model=args.model, epochs=1, patience=1, seed=args.seed, device="cpu", num_threads=args.threads,
        bucket_chunk=bucket, forward_slices=slices, valid_sample=256, max_len=args.max_len,
        row_filter="none",  # the trainer's own cost, without the loss filter's scoring run
    )
    started = (time.perf_counter(), time.process_time())
    result = train_model(train, split.valid, split.test.take(np.arange(256)), num_items, cfg, progress)
    wall = marks["end"][0] - started[0]
    cpu = marks["end"][1] - started[1]
    return {"slices": slices, "bucket_chunk": bucket, "train_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "loss": round(result.history[0]["loss"], 5)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True)
    p.add_argument("--model", default="sasrec")
    p.add_argument("--slices", default="1,2,4,8", help="forward_slices settings to time (1 = the baseline)")
    p.add_argument("--seed", type=int, default=2023)
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-patterns", dest="patterns", action="store_false",
                   help="original rows only (no pattern or regenerated rows)")
    p.add_argument("--regenerated", type=int, default=28134, help="stand-in regenerated rows (with patterns)")
    p.add_argument("--no-bucketed", dest="bucketed", action="store_false", help="skip the bucket_chunk=32 timing")
    p.add_argument("--note", default="", help="recorded as is, e.g. 'not quiet: two regenerations running'")
    args = p.parse_args()
    slices = sorted({int(s) for s in args.slices.split(",")} | {1})
    torch.set_num_threads(args.threads)
    split, train, num_items, info = load(args)
    log(f"rows: {info}, batches of 256: {-(-len(train) // 256)}")
    runs = []
    for k in slices:
        runs.append(one_epoch(split, train, num_items, args, k, 0))
        log(f"  uniform, forward_slices={k}: {runs[-1]}")
    if args.bucketed:
        runs.append(one_epoch(split, train, num_items, args, 1, 32))
        log(f"  bucketed (bucket_chunk=32), one piece: {runs[-1]}")
    base = runs[0]["train_s"]
    uniform = [r for r in runs if r["bucket_chunk"] == 0]
    best = min(uniform, key=lambda r: r["train_s"])
    print(json.dumps({
        "benchmark": "forward_slices", "dataset": Path(args.dataset).name, "model": args.model,
        "threads": args.threads, **info, "runs": runs,
        "baseline_train_s": base, "best_slices": best["slices"],
        "ratio": round(base / best["train_s"], 2),  # one-piece uniform epoch over the best sliced one
        "note": args.note,
    }))


if __name__ == "__main__":
    main()
