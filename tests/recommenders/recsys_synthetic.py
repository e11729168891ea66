"""Tiny synthetic data with planted transitions, shared by the recommender tests.

Item ``i`` is followed by ``i + 1`` (wrapping) with probability ``p_next``,
otherwise by a uniformly random item, so a sequential model can predict the
next item far better than item popularity can.
"""

from __future__ import annotations

import numpy as np

from models.data.sequences import EvalRows, Sequences, Split
from models.data.split import leave_one_out
from models.evaluation import metrics_from_ranks


def planted_sequences(
    num_users: int = 240,
    num_items: int = 40,
    min_len: int = 6,
    max_len: int = 14,
    p_next: float = 0.9,
    seed: int = 0,
) -> Sequences:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(num_users):
        n = int(rng.integers(min_len, max_len + 1))
        seq = [int(rng.integers(1, num_items + 1))]
        while len(seq) < n:
            follow = rng.random() < p_next
            seq.append(seq[-1] % num_items + 1 if follow else int(rng.integers(1, num_items + 1)))
        rows.append(seq)
    return Sequences.from_lists(rows)


def planted_split(max_len: int = 10, **kwargs) -> tuple[Split, int]:
    seqs = planted_sequences(**kwargs)
    return leave_one_out(seqs, max_len=max_len), int(seqs.items.max())


def popularity_metrics(
    split: Split, rows: EvalRows, num_items: int, ks=(10, 20)
) -> dict[str, float]:
    """Most-popular-item ranking (training counts), history masked, same rank rule."""
    counts = np.bincount(split.train.seqs.items, minlength=num_items + 1).astype(np.float64)
    counts[0] = -np.inf
    ranks = []
    for i in range(len(rows)):
        scores = counts.copy()
        hist = rows.history[i]
        target = int(rows.target[i])
        if target in set(hist.tolist()):
            ranks.append(num_items + 1)
            continue
        scores[hist] = -np.inf
        ranks.append(1 + int((scores > scores[target]).sum()))
    return metrics_from_ranks(np.array(ranks), ks)[0]
