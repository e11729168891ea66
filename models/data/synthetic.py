"""Synthetic interaction logs with planted sequential patterns.

Each user's history is a few planted patterns (short item sequences shared by
many users) embedded among noise items drawn with a popularity skew; about a
``noise`` share of the interactions are noise. A pattern
occurrence is either contiguous or, with probability ``noise``, perturbed: noise
items inserted inside it (the occurrence still fits a 5-item window, the
miner's default span) or, for 5-item patterns, two neighbours swapped. So
(a) rule-based mining recovers most planted patterns and (b) a next-item model
can learn the in-pattern transitions, which popularity cannot.
"""

from __future__ import annotations

import gzip
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from models.data.readers import format_from_extension

MINING_SPAN = 5  # keep perturbed occurrences inside the miner's window (spec §2.1, alpha = 5)
_START = 1_262_304_000  # 2010-01-01, so timestamps look like real epochs
_DAY = 86_400


@dataclass
class SyntheticData:
    interactions: pl.DataFrame  # user_id (str), item_id (str), timestamp (Int64 epoch seconds)
    patterns: list[tuple[str, ...]]  # planted patterns in original ids
    params: dict = field(default_factory=dict)


def generate(
    num_users: int = 500,
    num_items: int = 300,
    num_patterns: int = 40,
    pattern_len: tuple[int, int] = (2, 5),
    patterns_per_user: tuple[int, int] = (1, 4),
    noise: float = 0.3,
    min_len: int = 5,
    max_len: int = 30,
    seed: int = 0,
) -> SyntheticData:
    """A deterministic (per ``seed``) interaction log; rows come in shuffled order."""
    _check(
        num_users, num_items, num_patterns, pattern_len, patterns_per_user, noise, min_len, max_len
    )
    params = dict(locals())
    rng = np.random.default_rng(seed)
    item_pop = _zipf(num_items, 0.8, rng)  # noise items: popularity skew
    patterns = _plant(num_patterns, num_items, pattern_len, rng)
    pattern_pop = _zipf(num_patterns, 0.7, rng)

    pick_item = _sampler(item_pop, rng)
    filler_rate = noise / (1.0 - noise) if noise < 1.0 else float(max_len)
    users, items, times = [], [], []
    for u in range(num_users):
        k = min(int(rng.integers(patterns_per_user[0], patterns_per_user[1] + 1)), num_patterns)
        chosen = rng.choice(num_patterns, size=k, replace=False, p=pattern_pop)
        blocks = [_occurrence(patterns[p], noise, pick_item, rng) for p in chosen]
        while len(blocks) > 1 and sum(map(len, blocks)) > max_len:
            blocks.pop()
        planted = sum(map(len, blocks))
        length = planted + int(rng.poisson(filler_rate * planted))
        length = min(max(length, min_len, planted), max(max_len, planted))
        gaps = rng.multinomial(length - planted, gap_weights(len(blocks)))
        seq: list[int] = []
        for gap, block in zip(gaps, [*blocks, []], strict=True):
            seq.extend(pick_item(gap).tolist())
            seq.extend(block)
        start = _START + int(rng.integers(0, 365 * _DAY))
        steps = rng.integers(60, 3 * _DAY, size=len(seq))
        users.extend([u + 1] * len(seq))
        items.extend(seq)
        times.extend((start + np.cumsum(steps)).tolist())

    perm = rng.permutation(len(users))
    df = pl.DataFrame(
        {
            "user_id": np.asarray(users)[perm],
            "item_id": np.asarray(items)[perm] + 1,
            "timestamp": np.asarray(times, dtype=np.int64)[perm],
        }
    ).with_columns(
        user_id=pl.lit("u") + pl.col("user_id").cast(pl.String),
        item_id=pl.lit("i") + pl.col("item_id").cast(pl.String),
    )
    planted = [tuple(f"i{i + 1}" for i in p) for p in patterns]
    return SyntheticData(df, planted, params)


def write(path: str | Path, data: SyntheticData, format: str | None = None) -> Path:
    """Write the interactions as csv/tsv/jsonl/parquet/inter/txt (gzip when ``path`` ends in .gz)."""
    path = Path(path)
    fmt = format or format_from_extension(path)
    if fmt not in ("csv", "tsv", "jsonl", "parquet", "inter", "txt"):
        raise ValueError(f"cannot tell the format of {path.name!r}: pass format=")
    gz = path.name.lower().endswith(".gz")
    if gz and fmt == "parquet":
        raise ValueError("Parquet is compressed internally: do not gzip it")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".synth-") as tmp:
        plain = Path(tmp) / "data"
        _write_plain(plain, data.interactions, fmt)
        target = Path(tmp) / "out"
        if gz:
            with open(plain, "rb") as src, gzip.open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
        else:
            plain.rename(target)
        target.replace(path)
    return path


def _write_plain(path: Path, df: pl.DataFrame, fmt: str) -> None:
    if fmt == "csv":
        df.write_csv(path)
    elif fmt == "tsv":
        df.write_csv(path, separator="\t")
    elif fmt == "jsonl":
        df.write_ndjson(path)
    elif fmt == "parquet":
        df.write_parquet(path)
    elif fmt == "inter":
        with open(path, "wb") as f:
            f.write(b"user_id:token\titem_id:token\ttimestamp:float\n")
            df.write_csv(f, separator="\t", include_header=False)
    else:  # txt: one chronological line per user, users in first-appearance order
        lines = (
            df.with_row_index("_r")
            .sort("user_id", "timestamp", "_r")
            .group_by("user_id", maintain_order=True)
            .agg(pl.col("item_id"), first=pl.col("_r").min())
            .sort("first")
            .select(
                pl.concat_str([pl.col("user_id"), pl.col("item_id").list.join(" ")], separator=" ")
            )
        )
        lines.write_csv(path, include_header=False, quote_style="never")


def _check(
    num_users, num_items, num_patterns, pattern_len, patterns_per_user, noise, min_len, max_len
):
    if num_users < 2 or num_items < 2 or num_patterns < 1:
        raise ValueError("need at least 2 users, 2 items and 1 pattern")
    lo, hi = pattern_len
    if not 2 <= lo <= hi <= MINING_SPAN:
        raise ValueError(
            f"pattern_len must satisfy 2 <= min <= max <= {MINING_SPAN}, got {pattern_len}"
        )
    if hi > num_items:
        raise ValueError("patterns cannot be longer than the number of items")
    if not 0 <= patterns_per_user[0] <= patterns_per_user[1]:
        raise ValueError(f"bad patterns_per_user {patterns_per_user}")
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise must be in [0, 1], got {noise}")
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got {min_len}, {max_len}")


def _zipf(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    weights = weights[rng.permutation(n)]  # popularity does not follow the id order
    return weights / weights.sum()


def _plant(num_patterns: int, num_items: int, pattern_len: tuple[int, int], rng) -> list[list[int]]:
    """Distinct patterns; items are dealt from shuffled decks so patterns rarely share items."""
    patterns: list[list[int]] = []
    seen: set[tuple[int, ...]] = set()
    deck: list[int] = []
    attempts = 0
    while len(patterns) < num_patterns:
        attempts += 1
        if attempts > 100 * num_patterns:
            raise ValueError("cannot plant that many distinct patterns over so few items")
        k = int(rng.integers(pattern_len[0], pattern_len[1] + 1))
        if len(deck) < k:
            deck = rng.permutation(num_items).tolist()
        p = [deck.pop() for _ in range(k)]
        if len(set(p)) == k and tuple(p) not in seen:
            seen.add(tuple(p))
            patterns.append(p)
    return patterns


def gap_weights(blocks: int) -> np.ndarray:
    """Where noise goes: before and between blocks, rarely after the last one, so the
    most recent items (the evaluation targets) are often inside a pattern."""
    w = np.ones(blocks + 1)
    w[-1] = 0.25
    return w / w.sum()


def _sampler(p: np.ndarray, rng: np.random.Generator):
    """Draw items from ``p`` by inverse CDF (rng.choice re-normalises ``p`` on every call)."""
    cdf = np.cumsum(p)
    cdf[-1] = 1.0

    def draw(size: int) -> np.ndarray:
        return np.searchsorted(cdf, rng.random(size), side="right")

    return draw


def _occurrence(pattern: list[int], noise: float, pick_item, rng) -> list[int]:
    occ = list(pattern)
    if rng.random() >= noise:
        return occ
    room = MINING_SPAN - len(occ)
    if room == 0:
        j = int(rng.integers(0, len(occ) - 1))
        occ[j], occ[j + 1] = occ[j + 1], occ[j]
        return occ
    for _ in range(int(rng.integers(1, room + 1))):
        occ.insert(int(rng.integers(1, len(occ))), int(pick_item(1)[0]))
    return occ
