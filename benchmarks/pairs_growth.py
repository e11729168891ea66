"""Pairs cost per interaction against log size, old trie walk versus new (issue #15).

``benchmarks/scaling.py`` measured the ``pairs`` stage at 104.65 µs per
interaction at 25k users and 190.28 µs at 100k, with the same matches per
interaction: the old walk expanded every trie child of a matched prefix, and
the children grow with the pattern count. The new walk expands a prefix
through its children or through the positions left in its source,
whichever is fewer (``models.patterns.pairs._match_chunk``).

For each ``--users`` point a synthetic log is generated, prepared and mined
exactly as ``benchmarks/scaling.py`` does (``models.data.synthetic``, items =
users / 4, planted patterns = users / 50, seed 0; 5-core; split at max_len
50; alpha 5, beta 2 under ``pattern_budget``), cached under ``--work``, not
timed. Then ``build_pairs(pair_source, patterns, 10, "anywhere", 5, 2024)``
runs with the old walk (`_match_chunk(expand="children")`, the baseline) and the new one
on the same inputs in this one process, alternating old/new ``--repeats``
times; the best of each is kept and the two outputs must be identical.

The last stdout line is one JSON object: per point users, interactions,
patterns, matches, old/new seconds and µs per interaction and ``ratio``
(old / new seconds, same run); ``growth`` is µs per interaction at the
largest point over the smallest, for old and new.

    nice -n 5 python benchmarks/pairs_growth.py                 # 25k and 100k users
    nice -n 5 python benchmarks/pairs_growth.py --users 25000,50000
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import models.patterns.pairs as pairs_module  # noqa: E402
from models.data.sequences import Sequences  # noqa: E402
from models.patterns import Patterns, build_pairs, mine_patterns, pattern_budget  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# The walk before issue #15 (every state expands into all trie children of its
# node): the children side alone, the baseline.
old_match_chunk = functools.partial(pairs_module._match_chunk, expand="children")


NEW_MATCH_CHUNK = pairs_module._match_chunk


def inputs(users: int, work: Path) -> tuple[Sequences, Patterns, dict]:
    """pair sources and mined patterns of one point, as ``benchmarks/scaling.py`` builds them."""
    from models.data import synthetic
    from models.data.preprocess import PreparedDataset, prepare

    work.mkdir(parents=True, exist_ok=True)
    if not (work / "prepared").exists():
        t = time.perf_counter()
        data = synthetic.generate(num_users=users, num_items=max(100, users // 4),
                                  num_patterns=max(40, users // 50), seed=0)
        synthetic.write(work / "data.csv", data)
        prepare(work / "data.csv").save(work / "prepared")
        log(f"{users}: generated and prepared in {time.perf_counter() - t:.0f}s")
    ds = PreparedDataset.load(work / "prepared")
    split = ds.split(50)
    if not (work / "patterns.npz").exists():
        t = time.perf_counter()
        pats = mine_patterns(split.mining, 5, 2, max_patterns=pattern_budget(len(split.train)))
        np.savez(work / "patterns.npz", items=pats.seqs.items, offsets=pats.seqs.offsets,
                 support=pats.support, min_support=pats.min_support)
        log(f"{users}: mined {len(pats)} patterns in {time.perf_counter() - t:.0f}s")
    with np.load(work / "patterns.npz") as z:
        pats = Patterns(Sequences(z["items"], z["offsets"]), z["support"], int(z["min_support"]))
    info = {"users": ds.num_users, "items": ds.num_items, "interactions": int(len(ds.sequences.items)),
            "pair_source_items": int(len(split.pair_source.items)), "patterns": len(pats)}
    return split.pair_source, pats, info


def timed(match_chunk, sources: Sequences, pats: Patterns):
    pairs_module._match_chunk = match_chunk
    try:
        t = time.perf_counter()
        out = build_pairs(sources, pats, 10, "anywhere", 5, 2024)
        return time.perf_counter() - t, out
    finally:
        pairs_module._match_chunk = NEW_MATCH_CHUNK


def run_point(users: int, args) -> dict:
    sources, pats, point = inputs(users, Path(args.work) / f"u{users}")
    old_s, new_s, ref = [], [], None
    for r in range(args.repeats):
        for name, fn, times in (("old", old_match_chunk, old_s), ("new", NEW_MATCH_CHUNK, new_s)):
            seconds, out = timed(fn, sources, pats)
            times.append(seconds)
            log(f"{users}: {name} run {r + 1}: {seconds:.2f}s")
            if ref is None:
                ref = out
            elif not (np.array_equal(out.source_index, ref.source_index)
                      and np.array_equal(out.pattern_index, ref.pattern_index)
                      and np.array_equal(out.matches, ref.matches)):
                raise SystemExit(f"{users}: {name} pairs differ from the old walk's")
    n = point["interactions"]
    old, new = min(old_s), min(new_s)
    point.update({
        "matches": int(ref.matches.sum()), "pairs": len(ref),
        "matches_per_interaction": round(int(ref.matches.sum()) / n, 3),
        "old_s": round(old, 3), "new_s": round(new, 3),
        "old_us_per_interaction": round(old / n * 1e6, 3), "new_us_per_interaction": round(new / n * 1e6, 3),
        "ratio": round(old / new, 3), "identical": True,
        "old_runs_s": [round(s, 3) for s in old_s], "new_runs_s": [round(s, 3) for s in new_s],
    })
    return point


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", default="25000,100000", help="comma-separated user counts")
    ap.add_argument("--work", default="/tmp/dr4sr-pairs-growth", help="cache of generated logs and patterns")
    ap.add_argument("--repeats", type=int, default=3, help="alternating old/new runs; the best of each is kept")
    args = ap.parse_args()
    points = [run_point(int(u), args) for u in args.users.split(",") if u]
    growth = {}
    if len(points) >= 2:
        lo, hi = points[0], points[-1]
        growth = {k: round(hi[f"{k}_us_per_interaction"] / lo[f"{k}_us_per_interaction"], 3)
                  for k in ("old", "new")}
    print(json.dumps({"points": points, "growth": growth, "cpu_count": os.cpu_count(),
                      "loadavg": [round(x, 2) for x in os.getloadavg()]}))


if __name__ == "__main__":
    main()
