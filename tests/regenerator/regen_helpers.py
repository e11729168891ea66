"""Helpers of the regenerator tests: tiny planted data, a tiny config, one torch thread.

(A uniquely named module: every test folder has a ``conftest``, so importing
helpers ``from conftest`` could pick up another folder's.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.data.sequences import Sequences
from models.regenerator import RegeneratorConfig

PLANTED = [(1, 2, 3), (4, 5, 6, 7), (8, 9)]


@dataclass
class Planted:
    sources: Sequences  # one per user
    src: Sequences  # pair sources
    tgt: Sequences  # pair targets (planted patterns contained in the source)
    num_items: int


def make_planted(num_users: int = 48, num_items: int = 24, seed: int = 0) -> Planted:
    """Random sequences over items 10..N with planted patterns inserted contiguously;
    every planted pattern inside a sequence becomes a (sequence, pattern) pair.
    Some sequences repeat an item, as the restrictive softmax must handle that."""
    rng = np.random.default_rng(seed)
    rows, src, tgt = [], [], []
    for u in range(num_users):
        seq = rng.integers(10, num_items + 1, size=int(rng.integers(3, 9))).tolist()
        for p in PLANTED:
            if rng.random() < 0.5:
                at = int(rng.integers(0, len(seq) + 1))
                seq[at:at] = list(p)
        if u % 5 == 0:
            seq.append(seq[0])  # a repeated item
        rows.append(seq)
        for p in PLANTED:
            if _contains(seq, p):
                src.append(seq)
                tgt.append(list(p))
    return Planted(Sequences.from_lists(rows), Sequences.from_lists(src), Sequences.from_lists(tgt),
                   num_items)


def _contains(seq: list[int], p: tuple[int, ...]) -> bool:
    it = iter(seq)
    return all(x in it for x in p)


def tiny_config(**overrides) -> RegeneratorConfig:
    base = dict(d_model=32, n_heads=2, ffn_dim=64, cond_ffn_dim=64, cond_hidden=16, num_memories=3,
                dropout=0.1, batch_size=16, epochs=40, device="cpu", max_decode_len=10)
    return RegeneratorConfig.parity(**{**base, **overrides})


class one_thread:
    """Run torch on one intra-op thread, then restore the setting. On the shared
    2-core machine two OpenMP threads competing with other processes made the
    tiny models here ~20x slower."""

    def __enter__(self) -> None:
        self.before = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc) -> None:
        torch.set_num_threads(self.before)
