"""Level-wise frequent-pattern mining (spec §2, Seq2Pat semantics, optional
pattern budget): :func:`mine_patterns`. The semantics are described in
:mod:`models.patterns`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from models.data.sequences import Sequences
from models.patterns.arrays import _check_packable, _check_sequences, _chunks, _positions, _to_int64
from models.patterns.results import Patterns
from models.progress import Progress, ProgressEvent, no_progress


@dataclass
class _Occurrences:
    """Occurrences of frequent prefixes: prefix row, first and last flat position."""

    pid: np.ndarray  # (n,) int64 row of the prefix in the previous level's frequent keys
    start: np.ndarray  # (n,) int64
    last: np.ndarray  # (n,) int64


def _candidates(
    occ: _Occurrences | None,
    lo: int,
    hi: int,
    items: np.ndarray,
    end_of: np.ndarray,
    alpha: int,
    radix: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(key = prefix row * radix + item, start, last) of every one-item extension
    inside the span; level 1 (``occ is None``) is every single position."""
    if occ is None:
        pos = np.arange(lo, hi, dtype=np.int64)
        return items[lo:hi].astype(np.int64), pos, pos
    step = np.arange(1, alpha, dtype=np.int64)
    nxt = occ.last[:, None] + step[None, :]  # (n, alpha-1)
    ok = (nxt < end_of[occ.last][:, None]) & (nxt - occ.start[:, None] <= alpha - 1)
    counts = ok.sum(axis=1)
    last = nxt[ok]
    return np.repeat(occ.pid, counts) * radix + items[last], np.repeat(occ.start, counts), last


def mine_patterns(
    sequences: Sequences,
    alpha: int = 5,
    beta: int = 2,
    progress: Progress = no_progress,
    *,
    max_patterns: int | None = None,
    chunk_positions: int = 1_000_000,
) -> Patterns:
    """All item lists of length 2..alpha occurring within a span of ``alpha``
    consecutive positions in at least ``beta`` distinct sequences.

    With ``max_patterns``, the threshold is raised to the smallest
    ``beta* >= beta`` that keeps at most ``max_patterns`` patterns (whole
    support levels: ties are never split); ``Patterns.min_support`` says
    which threshold was used.

    Sequences are processed in chunks of about ``chunk_positions`` items;
    chunks hold whole sequences, so per-chunk supports simply add up.
    """
    if int(alpha) != alpha or alpha < 2:
        raise ValueError(f"alpha (max span) must be an integer >= 2, got {alpha}")
    if int(beta) != beta or beta < 1:
        raise ValueError(f"beta (min support) must be an integer >= 1, got {beta}")
    if max_patterns is not None and (int(max_patterns) != max_patterns or max_patterns < 1):
        raise ValueError(f"max_patterns must be an integer >= 1, got {max_patterns}")
    _check_sequences(sequences, "mining sequences")
    items = sequences.items
    radix = int(items.max(initial=0)) + 1
    row_of, end_of = _positions(sequences)
    chunks = _chunks(sequences, chunk_positions)
    if not chunks:
        return Patterns(Sequences.empty(), np.zeros(0, dtype=np.int64), int(beta))
    threshold = int(beta)
    kept_support = np.zeros(0, dtype=np.int64)  # supports of the patterns kept so far (levels >= 2)
    states: list[_Occurrences | None] = [None] * len(chunks)
    parents: list[np.ndarray] = []  # per level: row of the frequent prefix one level up
    last_items: list[np.ndarray] = []  # per level: the item that extends the prefix
    supports: list[np.ndarray] = []
    for level in range(1, alpha + 1):
        if level > 1:
            _check_packable(len(parents[-1]), radix, "pattern keys")
        partial, cached = [], None
        for c, (lo, hi) in enumerate(chunks):
            key, start, last = _candidates(states[c], lo, hi, items, end_of, alpha, radix)
            cached = (key, start, last) if len(chunks) == 1 else None
            partial.append(
                pl.DataFrame({"key": key, "row": row_of[last]})
                .group_by("key")
                .agg(pl.col("row").n_unique().alias("support"))
            )
        counted = (
            pl.concat(partial)
            .group_by("key")
            .agg(pl.col("support").sum())
            .filter(pl.col("support") >= threshold)
            .sort("key")
        )
        if max_patterns is not None and level > 1:
            support = np.concatenate([kept_support, _to_int64(counted["support"])])
            if len(support) > max_patterns:
                # smallest threshold leaving at most max_patterns: one above the
                # (max_patterns + 1)-th largest support
                threshold = max(threshold, int(-np.partition(-support, max_patterns)[max_patterns]) + 1)
                counted = counted.filter(pl.col("support") >= threshold)
            kept_support = support[support >= threshold]
        frequent = _to_int64(counted["key"])
        parents.append(frequent // radix)
        last_items.append(frequent % radix)
        supports.append(_to_int64(counted["support"]))
        found = sum(int((s >= threshold).sum()) for s in supports[1:])
        progress(
            ProgressEvent(
                "mine",
                level,
                alpha,
                metrics={"patterns": float(found)},
                message=f"length {level}: {len(frequent)} frequent",
            )
        )
        if level == alpha or len(frequent) == 0:
            break
        for c, (lo, hi) in enumerate(chunks):
            key, start, last = (
                cached
                if cached is not None
                else _candidates(states[c], lo, hi, items, end_of, alpha, radix)
            )
            slot = np.minimum(np.searchsorted(frequent, key), len(frequent) - 1)
            keep = frequent[slot] == key
            # For one prefix ending at one position, the latest start allows every
            # extension any earlier start allows: keep only that occurrence.
            kept = (
                pl.DataFrame({"pid": slot[keep], "last": last[keep], "start": start[keep]})
                .group_by(["pid", "last"])
                .agg(pl.col("start").max())
            )
            states[c] = _Occurrences(
                _to_int64(kept["pid"]), _to_int64(kept["start"]), _to_int64(kept["last"])
            )
    return _assemble(parents, last_items, supports, alpha, threshold)


def _assemble(
    parents: list[np.ndarray],
    last_items: list[np.ndarray],
    supports: list[np.ndarray],
    alpha: int,
    threshold: int,
) -> Patterns:
    """Rebuild item lists from the per-level (parent, item) chains and sort them."""
    width = alpha
    rows: list[np.ndarray] = []
    prev = last_items[0][:, None]  # (P1, 1) single items
    for level in range(1, len(parents)):
        cur = np.concatenate([prev[parents[level]], last_items[level][:, None]], axis=1)
        rows.append(np.pad(cur, ((0, 0), (0, width - cur.shape[1]))))
        prev = cur
    if not rows:
        return Patterns(Sequences.empty(), np.zeros(0, dtype=np.int64), threshold)
    padded = np.concatenate(rows)  # (P, alpha) trailing zeros: a prefix sorts before its extensions
    support = np.concatenate(supports[1:])
    # Shorter levels were counted before a budget raised the threshold to its
    # final value; their prefixes were still needed to rebuild longer rows.
    keep = support >= threshold
    padded, support = padded[keep], support[keep]
    order = np.lexsort([padded[:, c] for c in range(width - 1, -1, -1)] + [-support])
    padded, support = padded[order], support[order]
    lengths = (padded > 0).sum(axis=1)
    return Patterns(Sequences.from_lengths(padded[padded > 0], lengths), support, threshold)
