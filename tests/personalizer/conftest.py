"""Tiny synthetic data for the DR4SR+ tests: a noisy item chain (i → i+1 with
probability 0.8) so every model learns something within a few epochs."""

from __future__ import annotations

import numpy as np
import pytest

from models.data.sequences import RowSource, Sequences, Split, TrainRows
from models.data.split import leave_one_out

NUM_ITEMS = 40


def chain_sequences(users: int = 60, num_items: int = NUM_ITEMS, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    seqs = []
    for _ in range(users):
        s = [int(rng.integers(1, num_items + 1))]
        for _ in range(int(rng.integers(6, 12)) - 1):
            s.append(s[-1] % num_items + 1 if rng.random() < 0.8 else int(rng.integers(1, num_items + 1)))
        seqs.append(s)
    return seqs


@pytest.fixture(scope="session")
def tiny() -> tuple[Split, TrainRows]:
    """(split, training rows = original + pattern + regenerated rows)."""
    seqs = chain_sequences()
    split = leave_one_out(Sequences.from_lists(seqs), max_len=20)
    n = NUM_ITEMS
    patterns = TrainRows.build(
        Sequences.from_lists([[i, i % n + 1, (i + 1) % n + 1] for i in range(1, n + 1)]), RowSource.PATTERN
    )
    regenerated = TrainRows.build(
        Sequences.from_lists([s[:5] for s in split.train.seqs.to_lists() if len(s) >= 2]), RowSource.REGENERATED
    )
    return split, split.train.concat(patterns).concat(regenerated)
