"""Leave-one-out split inside the last-``max_len`` window (method spec §1.3)."""

from __future__ import annotations

import numpy as np

from models.data.sequences import EvalRows, RowSource, Sequences, Split, TrainRows


def leave_one_out(sequences: Sequences, max_len: int = 50) -> Split:
    """Split chronological per-user histories (row i = user i + 1).

    * mining input: the full history minus the last two items (not windowed);
    * window W = the last ``max_len`` items, m = |W|;
    * train row: W[:m-2] (read as input W[:m-3], target W[1:m-2]);
    * validation: history W[:m-2], target W[m-2];
    * test: history W[:m-1], target W[m-1].

    Every user needs at least 4 items (a train row of 2 items); preprocessing
    drops shorter users before this is called.
    """
    if max_len < 4:
        raise ValueError(f"max_len must be at least 4, got {max_len}")
    n = sequences.lengths
    if len(n) and n.min() < 4:
        raise ValueError("every user needs at least 4 interactions for a leave-one-out split")
    users = np.arange(1, len(sequences) + 1, dtype=np.int64)
    start = np.maximum(0, n - max_len)
    base = sequences.offsets[:-1]
    train_seqs = sequences.slice_rows(start, n - 2)
    test_hist = sequences.slice_rows(start, n - 1)
    valid = EvalRows(train_seqs, sequences.items[base + n - 2], users)
    test = EvalRows(test_hist, sequences.items[base + n - 1], users)
    mining = sequences.slice_rows(np.zeros_like(n), n - 2)
    train = TrainRows.build(train_seqs, RowSource.ORIGINAL, users)
    stats = {
        "users": int(len(sequences)),
        "interactions": int(n.sum()),
        "mean_length": float(n.mean()) if len(n) else 0.0,
        "users_longer_than_window": int((n > max_len).sum()),
        "max_len": int(max_len),
        "mean_train_input_length": float((train_seqs.lengths - 1).mean()) if len(n) else 0.0,
    }
    return Split(
        train=train, valid=valid, test=test, mining=mining, pair_source=train_seqs, stats=stats
    )
