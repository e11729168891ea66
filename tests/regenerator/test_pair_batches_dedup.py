"""PairBatches finds the distinct sources by chunked hashing (no padded grid of
every pair) and must order and index them exactly as np.unique(axis=0) over
that grid did (issue 15): same batches, same training."""

from __future__ import annotations

import numpy as np
import torch

from models.data.sequences import Sequences
from models.regenerator import PairBatches, wrap_tokens


def test_distinct_sources_match_the_padded_grid_unique():
    rng = np.random.default_rng(4)
    pool = [rng.integers(1, 9, size=int(rng.integers(1, 7))).tolist() for _ in range(30)]
    rows = [pool[int(i)] for i in rng.integers(0, len(pool), size=400)]  # many repeated sources
    src = Sequences.from_lists(rows)
    tgt = Sequences.from_lists([r[:1] + r[-1:] if len(r) > 1 else r for r in rows])
    batches = PairBatches(src, tgt, 10, 11, 32, True, torch.device("cpu"))

    grid, _ = wrap_tokens(src, 10, 11)
    uniq, inverse = np.unique(grid, axis=0, return_inverse=True)
    assert np.array_equal(batches.source_of, inverse.reshape(-1))
    assert torch.equal(batches.uniq_tok, torch.from_numpy(uniq))
    assert np.array_equal(batches.uniq_len, src.lengths[np.unique(inverse.reshape(-1), return_index=True)[1]])
