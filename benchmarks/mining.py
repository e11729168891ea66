"""Benchmark pattern mining and pair building (spec §2, quirk Q33).

Times ``mine_patterns`` and ``build_pairs`` on a dataset, and compares pair
building with the reference's algorithm (per user: shuffle the whole pattern
list, test each pattern for subsequence containment, stop after
``max_pairs`` kept), re-implemented plainly here, timed on a random sample
of users and extrapolated to all users.

    .venv/bin/python benchmarks/mining.py --dataset ../shared/data/amazon-beauty.txt

Progress goes to stderr; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.data.sequences import Sequences, Split  # noqa: E402
from models.data.split import leave_one_out  # noqa: E402
from models.patterns import build_pairs, describe, mine_patterns  # noqa: E402


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def load_split(path: Path, loader: str, max_len: int) -> Split:
    if loader == "prepare":
        from models.data.preprocess import prepare

        return prepare(path, max_len=max_len).split(max_len=max_len)
    # "txt": the one-line-per-user files are already 5-core and chronological.
    with path.open() as handle:
        rows = [[int(tok) for tok in line.split()[1:]] for line in handle if line.strip()]
    return leave_one_out(Sequences.from_lists(rows), max_len=max_len)


def is_subsequence(pattern: tuple[int, ...], seq: list[int]) -> bool:
    it = iter(seq)
    return all(item in it for item in pattern)


def reference_pairs(
    sources: list[list[int]], patterns: list[tuple[int, ...]], cap: int, seed: int
) -> list[int]:
    """The reference's per-user scan; returns the number of pairs per source."""
    rng = random.Random(seed)
    kept_per_source = []
    for seq in sources:
        order = patterns[:]
        rng.shuffle(order)
        kept = 0
        for pattern in order:
            if is_subsequence(pattern, seq):
                kept += 1
                if kept == cap:
                    break
        kept_per_source.append(kept)
    return kept_per_source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--alpha", type=int, default=5)
    parser.add_argument("--beta", type=int, default=2)
    parser.add_argument("--max-pairs", type=int, default=10)
    parser.add_argument("--match", choices=["anywhere", "window"], default="anywhere")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument(
        "--baseline-users", type=int, default=300, help="users timed for the reference scan"
    )
    parser.add_argument(
        "--loader",
        choices=["prepare", "txt"],
        default="prepare",
        help="prepare (5-core etc.) or read a one-line-per-user .txt as is",
    )
    args = parser.parse_args()

    t0 = time.perf_counter()
    split = load_split(args.dataset, args.loader, args.max_len)
    load_s = time.perf_counter() - t0
    rss_loaded = peak_rss_mb()
    log(f"loaded {len(split.pair_source):,} users in {load_s:.2f} s (peak RSS {rss_loaded:.0f} MB)")

    t0 = time.perf_counter()
    patterns = mine_patterns(split.mining, alpha=args.alpha, beta=args.beta)
    mine_s = time.perf_counter() - t0
    log(f"mined {len(patterns):,} patterns in {mine_s:.2f} s {patterns.length_counts()}")

    t0 = time.perf_counter()
    pairs = build_pairs(
        split.pair_source,
        patterns,
        max_per_source=args.max_pairs,
        match=args.match,
        alpha=args.alpha,
        seed=args.seed,
    )
    pair_s = time.perf_counter() - t0
    rss_peak = peak_rss_mb()
    log(f"built {len(pairs):,} pairs in {pair_s:.2f} s")

    # The reference scan only exists for plain subsequence matching.
    baseline = None
    if args.match == "anywhere":
        users = len(split.pair_source)
        sample = np.random.default_rng(args.seed).choice(
            users, min(args.baseline_users, users), replace=False
        )
        sources = [split.pair_source[int(u)].tolist() for u in sample]
        pattern_list = [tuple(p) for p in patterns.seqs.to_lists()]
        log(f"timing the reference per-user scan on {len(sample)} users ...")
        t0 = time.perf_counter()
        kept = reference_pairs(sources, pattern_list, args.max_pairs, args.seed)
        sample_s = time.perf_counter() - t0
        ours = np.minimum(pairs.matches[sample], args.max_pairs)
        baseline = {
            "baseline_sample_users": len(sample),
            "baseline_sample_s": round(sample_s, 3),
            "baseline_pair_s": round(sample_s * users / len(sample), 1),
            "baseline_agrees": bool(np.array_equal(np.asarray(kept), ours)),
        }
        log(
            f"reference scan: {sample_s:.2f} s for {len(sample)} users, "
            f"~{baseline['baseline_pair_s']:.0f} s extrapolated"
        )

    result = {
        "dataset": args.dataset.name,
        "loader": args.loader,
        "alpha": args.alpha,
        "beta": args.beta,
        "match": args.match,
        "max_pairs": args.max_pairs,
        "users": len(split.pair_source),
        **describe(patterns, pairs, max_per_source=args.max_pairs),
        "load_s": round(load_s, 3),
        "mine_s": round(mine_s, 3),
        "pair_s": round(pair_s, 3),
        "mine_pair_s": round(mine_s + pair_s, 3),
        "rss_after_load_mb": round(rss_loaded, 1),
        "peak_rss_mb": round(rss_peak, 1),
    }
    if baseline is not None:
        result.update(baseline)
        result["pair_speedup"] = round(baseline["baseline_pair_s"] / pair_s, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
