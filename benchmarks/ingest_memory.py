"""Peak memory of ingesting + preparing a large interaction CSV.

Generates an Amazon-ratings-like CSV (no header: user,item,rating,timestamp;
14-character user ids, 10-character item ids, Zipf item popularity) in a temp
dir, then runs in fresh subprocesses (so each peak RSS is its own):

* ``read``: models.data.readers.read_interactions only;
* ``prepare``: models.data.preprocess.prepare (read + 5-core + id maps + sort);
* ``baseline``: pandas.read_csv when pandas is installed, else an eager
  ``polars.read_csv`` with default type inference (what naive code would do).

Progress goes to stderr; the last stdout line is one JSON object with
``rows``, ``peak_rss_mb`` (prepare), ``seconds`` (prepare), ``ratio``
(prepare peak / baseline peak) and the details.

    .venv/bin/python benchmarks/ingest_memory.py --rows 10000000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
path, mode = sys.argv[1], sys.argv[2]
t = time.perf_counter()
out = {{}}
if mode == "read":
    from models.data.readers import read_interactions
    df = read_interactions(path)
    out["rows"] = len(df)
elif mode == "prepare":
    from models.data.preprocess import prepare
    d = prepare(path)
    out.update({{k: d.stats[k] for k in ("users", "items", "interactions", "interactions_before")}})
elif mode == "pandas":
    import pandas as pd
    df = pd.read_csv(path, header=None, dtype=str)
    out["rows"] = len(df)
else:
    import polars as pl
    df = pl.read_csv(path, has_header=False)
    out["rows"] = len(df)
out["seconds"] = time.perf_counter() - t
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def generate(path: Path, rows: int, users: int, items: int, seed: int) -> None:
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, items + 1) ** 0.9
    cdf = np.cumsum(weights / weights.sum())
    chunk = 2_000_000
    with open(path, "wb") as f:
        for lo in range(0, rows, chunk):
            n = min(chunk, rows - lo)
            df = pl.DataFrame(
                {
                    "u": rng.integers(0, users, n),
                    "i": np.minimum(np.searchsorted(cdf, rng.random(n)), items - 1),
                    "r": rng.integers(1, 6, n).astype(np.float64),
                    "t": rng.integers(946_684_800, 1_420_070_400, n) // 86_400 * 86_400,
                }
            ).select(
                (pl.lit("A") + pl.col("u").cast(pl.String).str.zfill(13)).alias("u"),
                (pl.lit("B") + pl.col("i").cast(pl.String).str.zfill(9)).alias("i"),
                "r",
                "t",
            )
            df.write_csv(f, include_header=False)
            log(f"generated {lo + n:,}/{rows:,} rows")


def measure(path: Path, mode: str) -> dict:
    code = _CHILD.format(root=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", code, str(path), mode], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--items", type=int, default=300_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, default=None, help="keep the CSV in this directory")
    args = ap.parse_args()

    try:
        import pandas  # noqa: F401

        baseline_mode = "pandas"
    except ImportError:
        baseline_mode = "polars-eager"

    with tempfile.TemporaryDirectory(prefix="dr4sr-ingest-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "ratings.csv"
        t0 = time.perf_counter()
        generate(path, args.rows, args.users, args.items, args.seed)
        size_mb = path.stat().st_size / 2**20
        log(f"wrote {size_mb:.0f} MiB in {time.perf_counter() - t0:.1f}s")
        results = {}
        for mode in ("read", "prepare", baseline_mode):
            log(f"measuring {mode} ...")
            results[mode] = measure(path, mode)
            log(f"  {mode}: {results[mode]}")

    prep, base = results["prepare"], results[baseline_mode]
    print(
        json.dumps(
            {
                "rows": args.rows,
                "peak_rss_mb": round(prep["peak_rss_mb"], 1),
                "seconds": round(prep["seconds"], 2),
                "ratio": round(prep["peak_rss_mb"] / base["peak_rss_mb"], 3),
                "baseline": baseline_mode,
                "baseline_peak_rss_mb": round(base["peak_rss_mb"], 1),
                "baseline_seconds": round(base["seconds"], 2),
                "read_peak_rss_mb": round(results["read"]["peak_rss_mb"], 1),
                "read_seconds": round(results["read"]["seconds"], 2),
                "file_mb": round(size_mb, 1),
                "peak_over_file_size": round(prep["peak_rss_mb"] / size_mb, 3),
                "prepared": {k: v for k, v in prep.items() if k not in ("peak_rss_mb", "seconds")},
                "under_2_gib": prep["peak_rss_mb"] < 2048,
            }
        )
    )


if __name__ == "__main__":
    main()
