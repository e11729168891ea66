"""Where an arm gains or loses against another, by user group: test NDCG@20
of two arms (each averaged over its seeds' per-user files) compared inside
groups of users by history length and by the training popularity of their
test item, with a paired t-test per group.

    python benchmarks/quality_groups.py ../shared/data/amazon-beauty.txt \\
        --base 'amazon-beauty-sasrec-original-bce-s*-none-none-none-b0-forward-slices-check.npz' \\
        --arm 'amazon-beauty-sasrec-dr4sr-bce-s*-fixed-none-none-b0.npz'

Prints one JSON line. The groups are chosen before looking (terciles of
length and of target popularity), and the p-values are not corrected for the
six tests: read them as a description, not as evidence of a lift.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from scipy import stats

RESULTS = Path(os.environ.get("DR4SR_QUALITY_RESULTS", Path(__file__).resolve().parent / "results"))


def _mean_over_seeds(folder: Path, pattern: str) -> tuple[np.ndarray, list[str]]:
    files = sorted(folder.glob(pattern))
    if not files:
        sys.exit(f"no per-user file matches {pattern!r} in {folder}")
    return np.mean([np.load(f)["ndcg@20"] for f in files], 0), [f.name for f in files]


def _history(dataset: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per user (file order): history length, and how often the test item
    occurs in the training inputs of all users (the last two items are the
    validation and test targets)."""
    rows = [line.split()[1:] for line in dataset.read_text().splitlines() if line.strip()]
    counts = Counter(item for row in rows for item in row[:-2])
    return np.array([len(r) for r in rows]), np.array([counts[r[-1]] for r in rows])


def _terciles(values: np.ndarray) -> list[tuple[str, np.ndarray]]:
    lo, hi = np.quantile(values, [1 / 3, 2 / 3])
    return [(f"<= {lo:g}", values <= lo), (f"{lo:g}-{hi:g}", (values > lo) & (values <= hi)), (f"> {hi:g}", values > hi)]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path, help="the 'user item item ...' file the runs were trained on")
    ap.add_argument("--base", required=True, help="glob of the base arm's per-user files")
    ap.add_argument("--arm", required=True, help="glob of the compared arm's per-user files")
    args = ap.parse_args(argv)
    folder = RESULTS / "per_user"
    base, base_files = _mean_over_seeds(folder, args.base)
    arm, arm_files = _mean_over_seeds(folder, args.arm)
    length, popularity = _history(args.dataset)
    if not len(base) == len(arm) == len(length):
        sys.exit(f"user counts differ: base {len(base)}, arm {len(arm)}, dataset {len(length)}")
    groups = []
    for by, values in (("history length", length), ("test item popularity", popularity)):
        for label, mask in _terciles(values):
            if not mask.any():  # tied values can leave a tercile empty
                continue
            test = stats.ttest_rel(arm[mask], base[mask])
            groups.append({"by": by, "group": label, "users": int(mask.sum()),
                           "base": round(float(base[mask].mean()), 5), "arm": round(float(arm[mask].mean()), 5),
                           "diff": round(float(arm[mask].mean() - base[mask].mean()), 5),
                           "p": float(f"{test.pvalue:.3g}")})
    out = {"dataset": args.dataset.name, "base": base_files, "arm": arm_files,
           "overall": {"base": round(float(base.mean()), 5), "arm": round(float(arm.mean()), 5)}, "groups": groups}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
