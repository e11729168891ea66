"""Ragged sequence containers shared by every stage.

Sequences are stored unpadded (CSR-style: one flat item array plus offsets)
and padded per batch later. Item ids are contiguous ints, 0 is padding and
never appears inside a stored sequence.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np


class RowSource(IntEnum):
    """Where a training row came from (replaces the reference's magic user ids)."""

    ORIGINAL = 0
    PATTERN = 1
    REGENERATED = 2

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Sequences:
    """A ragged array of int sequences: row i is ``items[offsets[i]:offsets[i+1]]``."""

    items: np.ndarray  # (total,) int64
    offsets: np.ndarray  # (n + 1,) int64, offsets[0] == 0

    def __post_init__(self) -> None:
        if self.offsets.ndim != 1 or len(self.offsets) == 0 or self.offsets[0] != 0:
            raise ValueError("offsets must be a 1-D array starting at 0")
        if self.offsets[-1] != len(self.items):
            raise ValueError("offsets[-1] must equal len(items)")

    # -- construction ---------------------------------------------------
    @classmethod
    def from_lists(cls, rows: Iterable[Sequence[int]]) -> Sequences:
        rows = [np.asarray(r, dtype=np.int64) for r in rows]
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        items = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        return cls(items.astype(np.int64, copy=False), offsets)

    @classmethod
    def from_lengths(cls, items: np.ndarray, lengths: np.ndarray) -> Sequences:
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls(np.asarray(items, dtype=np.int64), offsets)

    @classmethod
    def empty(cls) -> Sequences:
        return cls(np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.int64))

    # -- access ---------------------------------------------------------
    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.items[self.offsets[i] : self.offsets[i + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self[i]

    def to_lists(self) -> list[list[int]]:
        return [r.tolist() for r in self]

    def take(self, index: np.ndarray) -> Sequences:
        """Rows ``index`` (any order, repeats allowed) as a new ragged array."""
        index = np.asarray(index, dtype=np.int64)
        lengths = self.lengths[index]
        starts = self.offsets[index]
        total = int(lengths.sum())
        out_offsets = np.zeros(len(index) + 1, dtype=np.int64)
        np.cumsum(lengths, out=out_offsets[1:])
        # gather positions: start of row + position within row
        row_of = np.repeat(np.arange(len(index)), lengths)
        pos = np.arange(total, dtype=np.int64) - out_offsets[row_of]
        return Sequences(self.items[starts[row_of] + pos], out_offsets)

    def slice_rows(self, start: np.ndarray, stop: np.ndarray) -> Sequences:
        """Per-row sub-slice ``row[start_i:stop_i]`` (non-negative, clipped to the row)."""
        lengths = self.lengths
        start = np.clip(np.asarray(start, dtype=np.int64), 0, lengths)
        stop = np.clip(np.asarray(stop, dtype=np.int64), start, lengths)
        new_len = stop - start
        out_offsets = np.zeros(len(self) + 1, dtype=np.int64)
        np.cumsum(new_len, out=out_offsets[1:])
        row_of = np.repeat(np.arange(len(self)), new_len)
        pos = np.arange(int(new_len.sum()), dtype=np.int64) - out_offsets[row_of]
        return Sequences(self.items[self.offsets[:-1][row_of] + start[row_of] + pos], out_offsets)

    def concat(self, other: Sequences) -> Sequences:
        return Sequences(
            np.concatenate([self.items, other.items]),
            np.concatenate([self.offsets, other.offsets[1:] + self.offsets[-1]]),
        )

    def pad(
        self, rows: np.ndarray | None = None, length: int | None = None, left: bool = False
    ) -> np.ndarray:
        """Dense ``(len(rows), length)`` int64 matrix, 0-padded on the right (or left).

        ``length`` defaults to the longest selected row (per-batch dynamic
        padding). Rows longer than ``length`` keep their *last* items.
        """
        seqs = self if rows is None else self.take(rows)
        lengths = seqs.lengths
        width = int(lengths.max(initial=0)) if length is None else int(length)
        out = np.zeros((len(seqs), width), dtype=np.int64)
        if width == 0 or len(seqs) == 0:
            return out
        keep = np.minimum(lengths, width)
        row_of = np.repeat(np.arange(len(seqs)), keep)
        rank = np.arange(int(keep.sum()), dtype=np.int64) - np.repeat(np.cumsum(keep) - keep, keep)
        src = seqs.offsets[:-1][row_of] + (lengths[row_of] - keep[row_of]) + rank
        col = rank + (width - keep[row_of]) if left else rank
        out[row_of, col] = seqs.items[src]
        return out


@dataclass(frozen=True)
class TrainRows:
    """Training rows: each row is a sequence ``s`` (len >= 2) read as
    input ``s[:-1]`` and all-position target ``s[1:]``."""

    seqs: Sequences
    source: np.ndarray  # (n,) uint8 RowSource codes
    user: np.ndarray  # (n,) int64 user index (1..U), 0 for rows with no user (patterns)

    def __len__(self) -> int:
        return len(self.seqs)

    @classmethod
    def build(cls, seqs: Sequences, source: RowSource, user: np.ndarray | None = None) -> TrainRows:
        n = len(seqs)
        return cls(
            seqs,
            np.full(n, int(source), dtype=np.uint8),
            np.zeros(n, dtype=np.int64) if user is None else np.asarray(user, dtype=np.int64),
        )

    def concat(self, other: TrainRows) -> TrainRows:
        return TrainRows(
            self.seqs.concat(other.seqs),
            np.concatenate([self.source, other.source]),
            np.concatenate([self.user, other.user]),
        )

    def counts(self) -> dict[str, int]:
        return {s.label: int((self.source == s).sum()) for s in RowSource}

    def take(self, index: np.ndarray) -> TrainRows:
        """Rows ``index`` (any order) as new training rows."""
        index = np.asarray(index, dtype=np.int64)
        return TrainRows(self.seqs.take(index), self.source[index], self.user[index])

    def without_pad(self) -> TrainRows:
        """Rows with the pad id removed, for export in original ids.

        The parity decoder may emit the pad id inside a regenerated row (spec
        Q12); the trainer treats it as a hole, but it has no original id. Rows
        left with fewer than two items are dropped.
        """
        keep_item = self.seqs.items != 0
        if keep_item.all():
            return self
        row_of = np.repeat(np.arange(len(self)), self.seqs.lengths)
        lengths = np.bincount(row_of[keep_item], minlength=len(self))
        seqs = Sequences.from_lengths(self.seqs.items[keep_item], lengths)
        rows = np.flatnonzero(lengths >= 2)
        return TrainRows(seqs, self.source, self.user).take(rows)


@dataclass(frozen=True)
class EvalRows:
    """Validation or test rows: history (masked at ranking) and one target item."""

    history: Sequences
    target: np.ndarray  # (n,) int64
    user: np.ndarray  # (n,) int64

    def __len__(self) -> int:
        return len(self.history)

    def take(self, index: np.ndarray) -> EvalRows:
        """Rows ``index`` (any order) as new evaluation rows."""
        index = np.asarray(index, dtype=np.int64)
        return EvalRows(self.history.take(index), self.target[index], self.user[index])


@dataclass
class Split:
    """Leave-one-out split inside the last-``max_len`` window (method spec §1.3)."""

    train: TrainRows  # one ORIGINAL row per user: W[:m-2]
    valid: EvalRows  # history W[:m-2], target W[m-2]
    test: EvalRows  # history W[:m-1], target W[m-1]
    mining: Sequences  # full history minus the last two items (not windowed)
    pair_source: Sequences  # W[:m-2] for every user (pre-training pair sources)
    stats: dict = field(default_factory=dict)


def save_rows(path, rows: TrainRows) -> None:
    """Write training rows to an ``.npz`` file (plain arrays, no pickles), atomically."""
    import os
    import tempfile
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npz")
    os.close(fd)
    try:
        np.savez(
            tmp,
            items=rows.seqs.items,
            offsets=rows.seqs.offsets,
            source=rows.source,
            user=rows.user,
        )
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_rows(path) -> TrainRows:
    """Read training rows written by :func:`save_rows`."""
    with np.load(path, allow_pickle=False) as data:
        return TrainRows(
            Sequences(data["items"].astype(np.int64), data["offsets"].astype(np.int64)),
            data["source"].astype(np.uint8),
            data["user"].astype(np.int64),
        )
