"""Packed token rows for the regenerator's training step.

Per-token work (projections, FFN, LayerNorm, memory MLP) runs on the real
tokens of a batch only, laid out as ``(n, d)`` rows. Attention needs a
rectangle, so a :class:`Layout` splits the batch rows into a few groups and
pads each group only to its own longest row (rows are sorted by length by
the batcher, which changes no loss term). ``Layout.dense`` is the plain
padded batch, used by the reference path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor


@dataclass
class Grid:
    """A group of batch rows whose tokens are padded together for attention.

    ``index`` holds flat positions ``r * length + s`` (r relative to
    ``rows``) of the packed token rows ``tokens``; None: not packed.
    """

    rows: slice
    tokens: slice
    length: int
    index: Tensor | None
    bias: Tensor | None = None  # self-attention bias (rows, 1, 1|length, length): 0 or -inf
    key_bias: Tensor | None = None  # key padding only (rows, 1, 1, length), for cross-attention

    def to_padded(self, x: Tensor) -> Tensor:  # (n, D) -> (R, S, D), zeros at pads
        r = self.rows.stop - self.rows.start
        if self.index is None:
            return x.view(r, self.length, -1)
        grid = x.new_zeros(r * self.length, x.shape[-1])
        return grid.index_copy(0, self.index, x).view(r, self.length, -1)

    def to_packed(self, y: Tensor) -> Tensor:  # (R, S, D) -> (n, D)
        flat = y.reshape(-1, y.shape[-1])
        return flat if self.index is None else flat.index_select(0, self.index)


@dataclass
class Layout:
    """Packed token rows of a ``(batch, length)`` batch: ``whole`` spans every
    row, ``groups`` split the rows for attention so that short rows are not
    padded to the longest one of the batch. Layouts built with the same
    batch size and group count split the rows at the same places, so the
    decoder's groups line up with the encoder's for cross-attention."""

    whole: Grid
    groups: list[Grid]

    @classmethod
    def dense(cls, batch: int, length: int) -> Layout:
        grid = Grid(slice(0, batch), slice(0, batch * length), length, None)
        return cls(grid, [grid])

    @classmethod
    def packed(cls, valid: Tensor, groups: int) -> Layout:
        """valid (B, S) bool, True = real token; rows ideally sorted by length."""
        b, s = valid.shape
        flat = valid.reshape(-1).nonzero().squeeze(1)  # (n,) flat positions of real tokens
        lengths = valid.sum(1).cpu().numpy()
        ends = np.cumsum(lengths)
        bounds = np.linspace(0, b, max(1, min(groups, b)) + 1).round().astype(int)
        out = []
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            width = max(1, int(lengths[lo:hi].max()))
            t0, t1 = (int(ends[lo - 1]) if lo else 0), int(ends[hi - 1])
            part = flat[t0:t1]
            out.append(Grid(slice(lo, hi), slice(t0, t1), width, (part // s - lo) * width + part % s))
        return cls(Grid(slice(0, b), slice(0, len(flat)), s, flat), out)

    def to_padded(self, x: Tensor) -> Tensor:
        return self.whole.to_padded(x)

    def to_packed(self, y: Tensor) -> Tensor:
        return self.whole.to_packed(y)

    def split_tokens(self, x: Tensor) -> tuple[Tensor, ...]:
        """x (n, D) -> one part per group. (A split, not a slice per group: a
        slice's backward builds a zero tensor of the whole input each time.)"""
        if len(self.groups) == 1:
            return (x,)
        return x.split([g.tokens.stop - g.tokens.start for g in self.groups])
