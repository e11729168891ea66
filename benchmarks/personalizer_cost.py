"""Cost of DR4SR+ personalized training against plain training, on the same rows.

Both runs go through the real trainer (``models.training.train_model`` for the
plain run, ``models.personalizer.train_personalized`` for DR4SR+) with the
same config and seed. Epoch 0 is the warm-up of the personalized run
(``warmup_epochs=0``: weighting starts at epoch index 1, spec §7.3); the
measured epochs are 1..E of both runs, when the personalized run weights
every position and takes a meta step every ``--interval`` optimiser steps.
An epoch's time is its training part only: from the end of the previous
epoch's validation to its last optimiser step (validation is identical in both
runs and not counted), on the wall clock and as process CPU time (less
sensitive to other load on a shared machine). Each run is a fresh process so
peak RSS is per run; with ``--repeats`` the runs alternate and the fastest
repeat of each kind is kept.

Training rows: the original rows of the leave-one-out split plus the mined
pattern rows (alpha 5, beta 2) unless ``--no-patterns``. Parity weighting
personalises the original rows and leaves the pattern rows at weight 1.

``--regenerated ROWS`` adds the shape of a parity regenerated file: the
original rows a second time (Q1) and ROWS regenerated rows (the parity
regeneration of Beauty gave 34,073). They are stand-ins, not decodes: each is
a contiguous 2-4 item window (mean about 2.5, like the parity decodes after
stripping) of a random user's training row, with source REGENERATED, so the
personalizer weights them. The cost depends on row count and width, not on
which items they hold; a real regeneration takes ~15 minutes of CPU.

    python benchmarks/personalizer_cost.py --dataset ../shared/data/amazon-beauty.txt
    python benchmarks/personalizer_cost.py --dataset ../shared/data/amazon-beauty.txt --regenerated 34073

Progress goes to stderr; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from models.data.sequences import RowSource, Sequences, Split, TrainRows  # noqa: E402
from models.data.split import leave_one_out  # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def read_sequences(path: str) -> Sequences:
    """One line per user: ``user item item ...`` (already 5-core, chronological)."""
    rows = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) > 1:
                rows.append([int(x) for x in parts[1:]])
    return Sequences.from_lists(rows)


def load(args: argparse.Namespace) -> tuple[Split, TrainRows, int, dict]:
    seqs = read_sequences(args.dataset)
    split = leave_one_out(seqs, max_len=args.max_len)
    train, info = split.train, {"original_rows": len(split.train), "pattern_rows": 0, "regenerated_rows": 0}
    if args.patterns:
        from models.patterns import mine_patterns, pattern_rows

        started = time.perf_counter()
        patterns = mine_patterns(split.mining, alpha=5, beta=2)
        train = train.concat(pattern_rows(patterns))
        info.update(pattern_rows=len(patterns), mining_s=round(time.perf_counter() - started, 2))
    if args.regenerated:
        train = train.concat(split.train).concat(standin_regenerated(split.train, args.regenerated, args.seed))
        info.update(original_rows=2 * info["original_rows"], regenerated_rows=args.regenerated)
    return split, train, int(seqs.items.max()), info


def standin_regenerated(original: TrainRows, n: int, seed: int) -> TrainRows:
    """``n`` rows shaped like parity regenerated rows: contiguous windows of 2, 3
    or 4 items (probabilities 0.6 / 0.3 / 0.1) of random users' training rows."""
    rng = np.random.default_rng([seed, 7])
    row = rng.integers(0, len(original), n)
    avail = original.seqs.lengths[row]
    want = rng.choice([2, 3, 4], size=n, p=[0.6, 0.3, 0.1])
    length = np.minimum(want, avail)
    start = original.seqs.offsets[row] + (rng.random(n) * (avail - length + 1)).astype(np.int64)
    index = np.repeat(start - np.cumsum(length) + length, length) + np.arange(int(length.sum()))
    seqs = Sequences.from_lengths(original.seqs.items[index], length)
    return TrainRows.build(seqs, RowSource.REGENERATED, original.user[row])


def worker(args: argparse.Namespace) -> dict:
    from models.evaluation import resolve_device
    from models.personalizer import PersonalizerConfig, train_personalized
    from models.training import TrainConfig, train_model

    split, train, num_items, info = load(args)
    # (wall, process CPU) clocks at the end of each epoch's training / validation
    valid_end: dict[int, tuple[float, float]] = {}
    train_end: dict[int, tuple[float, float]] = {}

    def progress(event) -> None:  # noqa: ANN001
        now = (time.perf_counter(), time.process_time())
        if event.stage == "train" and event.done == event.total:
            train_end[event.epoch] = now
        elif event.stage == "valid":
            valid_end[event.epoch] = now
            log(f"  [{args.worker}] epoch {event.epoch} done, ndcg@20 {event.metrics.get('ndcg@20', 0):.4f}")

    config = TrainConfig(
        model=args.model,
        epochs=args.epochs + 1,
        patience=args.epochs + 1,
        device=args.device,
        seed=args.seed,
        num_threads=args.threads,
        max_len=args.max_len,
        row_filter="none",  # plain training's own cost, without the loss filter's scoring run
    )
    extra: dict = {}
    if args.worker == "plain":
        train_model(train, split.valid, split.test, num_items, config, progress)
    else:
        pcfg = PersonalizerConfig.parity(warmup_epochs=0, interval=args.interval)
        result = train_personalized(train, split.valid, split.test, num_items, config, pcfg, progress)
        extra = {
            "meta_steps": result.meta["meta_steps"],
            "weights": {k: {"mean": v["mean"], "std": v["std"]} for k, v in result.weights.items()},
        }
    measured = range(1, args.epochs + 1)
    return {
        "epoch_s": [train_end[e][0] - valid_end[e - 1][0] for e in measured],
        "epoch_cpu_s": [train_end[e][1] - valid_end[e - 1][1] for e in measured],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "device": str(resolve_device(args.device)),
        **info,
        **extra,
    }


def run_worker(args: argparse.Namespace, kind: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind]
    for name in ("dataset", "model", "epochs", "interval", "device", "seed", "max_len", "regenerated"):
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    if not args.patterns:
        cmd.append("--no-patterns")
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True)
    p.add_argument("--model", default="sasrec")
    p.add_argument("--epochs", type=int, default=1, help="measured epochs (after one warm-up epoch)")
    p.add_argument("--interval", type=int, default=30, help="optimiser steps between meta steps")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=2023)
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=1, help="alternating plain/personalized runs; best kept")
    p.add_argument("--no-patterns", dest="patterns", action="store_false")
    p.add_argument("--regenerated", type=int, default=0,
                   help="add the original rows again and this many stand-in regenerated rows")
    p.add_argument("--note", default="", help="recorded as is, e.g. 'not quiet: a quality run on one core'")
    p.add_argument("--worker", choices=("plain", "personalized"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if not Path(args.dataset).is_file():
        sys.exit(f"dataset not found: {args.dataset}")
    runs: dict[str, list[dict]] = {"plain": [], "personalized": []}
    for r in range(args.repeats):  # alternate the two, so a busy spell hits both
        log(f"[{r + 1}/{args.repeats}] plain training ({args.model}, 1 + {args.epochs} epochs)")
        runs["plain"].append(run_worker(args, "plain"))
        log(f"[{r + 1}/{args.repeats}] personalized training ({args.model}, warm-up + {args.epochs} weighted epochs)")
        runs["personalized"].append(run_worker(args, "personalized"))

    def best(kind: str, key: str) -> float:
        # the least disturbed repeat: on a shared machine noise only ever adds time
        return min(statistics.mean(run[key]) for run in runs[kind])

    pers = runs["personalized"][0]
    plain_s, pers_s = best("plain", "epoch_s"), best("personalized", "epoch_s")
    plain_cpu, pers_cpu = best("plain", "epoch_cpu_s"), best("personalized", "epoch_cpu_s")
    result = {
        "benchmark": "personalizer_cost",
        "dataset": Path(args.dataset).name,
        "model": args.model,
        "device": pers["device"],
        "rows": {"original": pers["original_rows"], "pattern": pers["pattern_rows"],
                 "regenerated": pers["regenerated_rows"]},
        "regenerated_rows": "stand-ins (see --help)" if args.regenerated else "none",
        "note": args.note,
        "measured_epochs": args.epochs,
        "repeats": args.repeats,
        "threads": args.threads,
        "interval": args.interval,
        "meta_steps_per_run": pers["meta_steps"],
        "plain_epoch_s": round(plain_s, 3),
        "personalized_epoch_s": round(pers_s, 3),
        "overhead": round(pers_s / plain_s, 3),
        "plain_epoch_cpu_s": round(plain_cpu, 3),
        "personalized_epoch_cpu_s": round(pers_cpu, 3),
        "overhead_cpu": round(pers_cpu / plain_cpu, 3),
        "target_overhead": 1.35,
        "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs["personalized"]), 1),
        "plain_peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs["plain"]), 1),
        "raw_epoch_s": {k: [run["epoch_s"] for run in v] for k, v in runs.items()},
        "weights": pers["weights"],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
