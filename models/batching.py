"""Collation of ragged rows into padded tensor batches (spec §1.4, §1.5, §6.1).

Rows are stored unpadded (:class:`~models.data.sequences.Sequences`) and padded
per batch to the longest row of that batch, never to a fixed 50 (quirk Q35).
A row ``s`` is read as input ``s[:-1]`` and all-position target ``s[1:]``; rows
longer than ``max_len + 1`` keep their last ``max_len + 1`` items.

What one training *example* is depends on the model, so it is a loader
transform rather than a dataset file (quirk Q23):

* :class:`AllPositions` (SASRec, GRU4Rec, GNN, CL4SRec): one example per row,
  right-padded, every position a next-item target.
* :class:`PrefixExpansion` (FMLP-Rec): every row expands into one example per
  valid position ``t`` (input = the first ``t`` items, target = item ``t + 1``),
  left-padded to exactly ``max_len`` because FMLP's FFT filter mixes all slots.

Negatives are not drawn here: models draw them in ``position_losses`` with a
uniform integer draw (quirk Q36), so every loss evaluation gets fresh ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from models.data.sequences import EvalRows, TrainRows


class BatchingError(ValueError):
    """Rows or batching parameters that cannot be collated."""


@dataclass
class Batch:
    """One padded batch. ``T`` is the batch's own width (dynamic padding)."""

    input: Tensor  # (B, T) long, 0 = padding (right-padded; FMLP: left-padded to max_len)
    target: Tensor  # (B, T) long, 0 = padding; FMLP and evaluation: (B, 1)
    lengths: Tensor  # (B,) long, number of valid input items
    source: Tensor  # (B,) uint8 RowSource code (evaluation: 0)
    row: Tensor  # (B,) long index into the TrainRows / EvalRows the batch came from
    left_padded: bool = False

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        moved = {
            f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
            for f in fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        return Batch(**moved, left_padded=self.left_padded)

    def __len__(self) -> int:
        return int(self.input.shape[0])

    @property
    def valid(self) -> Tensor:
        """(B, T) bool: positions that carry a training target."""
        return self.target != 0


@dataclass(frozen=True)
class Examples:
    """The example space of a transform: example ``i`` uses items
    ``seqs[row[i]][start[i]:end[i]]`` of its row."""

    row: np.ndarray  # (n,) int64
    start: np.ndarray  # (n,) int64
    end: np.ndarray  # (n,) int64

    def __len__(self) -> int:
        return len(self.row)

    @property
    def input_lengths(self) -> np.ndarray:
        return self.end - self.start - 1


class RowTransform(Protocol):
    """How rows become examples and examples become batches."""

    max_len: int
    left_padded: bool
    dynamic_width: bool  # batches are as wide as their longest example (bucketing helps)

    def examples(self, rows: TrainRows) -> Examples: ...

    def collate(self, rows: TrainRows, ex: Examples, index: np.ndarray) -> Batch: ...

    def collate_eval(self, rows: EvalRows, index: np.ndarray) -> Batch: ...


def _check_rows(rows: TrainRows) -> None:
    lengths = rows.seqs.lengths
    if len(lengths) and lengths.min() < 2:
        bad = int(np.argmin(lengths))
        raise BatchingError(
            f"training row {bad} has {int(lengths[bad])} item(s); every row needs at least 2 "
            "(one input item and one target)"
        )


def _window_start(lengths: np.ndarray, max_len: int) -> np.ndarray:
    # rows longer than max_len + 1 keep their last max_len + 1 items
    return np.maximum(0, lengths - (max_len + 1))


class AllPositions:
    """One right-padded example per row; the batch is as wide as its longest row."""

    left_padded = False
    dynamic_width = True

    def __init__(self, max_len: int = 50) -> None:
        if max_len < 1:
            raise BatchingError(f"max_len must be >= 1, got {max_len}")
        self.max_len = int(max_len)

    def examples(self, rows: TrainRows) -> Examples:
        _check_rows(rows)
        lengths = rows.seqs.lengths
        return Examples(
            np.arange(len(rows), dtype=np.int64), _window_start(lengths, self.max_len), lengths
        )

    def collate(self, rows: TrainRows, ex: Examples, index: np.ndarray) -> Batch:
        r, start, end = ex.row[index], ex.start[index], ex.end[index]
        seqs = rows.seqs.take(r)
        n_in = end - start - 1
        width = int(n_in.max(initial=0))
        inp = seqs.slice_rows(start, end - 1).pad(length=width)  # (B, T)
        tgt = seqs.slice_rows(start + 1, end).pad(length=width)  # (B, T)
        return Batch(
            torch.from_numpy(inp),
            torch.from_numpy(tgt),
            torch.from_numpy(n_in),
            torch.from_numpy(rows.source[r]),
            torch.from_numpy(r),
        )

    def collate_eval(self, rows: EvalRows, index: np.ndarray) -> Batch:
        index = np.asarray(index, dtype=np.int64)
        hist = rows.history.take(index)
        lengths = np.minimum(hist.lengths, self.max_len)
        if len(lengths) and lengths.min() < 1:
            raise BatchingError(
                f"evaluation row {int(index[int(np.argmin(lengths))])} has an empty history"
            )
        inp = hist.pad(length=int(lengths.max(initial=0)))  # keeps the last max_len items
        return _eval_batch(rows, index, inp, lengths, left_padded=False)


class PrefixExpansion:
    """FMLP-Rec's data layout (spec §1.5): every valid position of a row becomes a
    single-target example whose input is left-padded to exactly ``max_len``."""

    left_padded = True
    dynamic_width = False

    def __init__(self, max_len: int = 50) -> None:
        if max_len < 1:
            raise BatchingError(f"max_len must be >= 1, got {max_len}")
        self.max_len = int(max_len)

    def examples(self, rows: TrainRows) -> Examples:
        _check_rows(rows)
        lengths = rows.seqs.lengths
        start = _window_start(lengths, self.max_len)
        per_row = lengths - start - 1  # prefixes t = 1..n_in
        row = np.repeat(np.arange(len(rows), dtype=np.int64), per_row)
        first = np.cumsum(per_row) - per_row
        t = np.arange(int(per_row.sum()), dtype=np.int64) - np.repeat(first, per_row) + 1
        return Examples(row, start[row], start[row] + t + 1)

    def collate(self, rows: TrainRows, ex: Examples, index: np.ndarray) -> Batch:
        r, start, end = ex.row[index], ex.start[index], ex.end[index]
        seqs = rows.seqs.take(r)
        inp = seqs.slice_rows(start, end - 1).pad(length=self.max_len, left=True)  # (B, L)
        tgt = rows.seqs.items[rows.seqs.offsets[r] + end - 1]  # (B,)
        return Batch(
            torch.from_numpy(inp),
            torch.from_numpy(tgt[:, None].copy()),
            torch.from_numpy(end - start - 1),
            torch.from_numpy(rows.source[r]),
            torch.from_numpy(r),
            left_padded=True,
        )

    def collate_eval(self, rows: EvalRows, index: np.ndarray) -> Batch:
        index = np.asarray(index, dtype=np.int64)
        hist = rows.history.take(index)
        lengths = np.minimum(hist.lengths, self.max_len)
        if len(lengths) and lengths.min() < 1:
            raise BatchingError(
                f"evaluation row {int(index[int(np.argmin(lengths))])} has an empty history"
            )
        inp = hist.pad(length=self.max_len, left=True)
        return _eval_batch(rows, index, inp, lengths, left_padded=True)


def _eval_batch(
    rows: EvalRows, index: np.ndarray, inp: np.ndarray, lengths: np.ndarray, left_padded: bool
) -> Batch:
    return Batch(
        torch.from_numpy(inp),
        torch.from_numpy(np.asarray(rows.target[index], dtype=np.int64)[:, None].copy()),
        torch.from_numpy(lengths.astype(np.int64)),
        torch.zeros(len(index), dtype=torch.uint8),
        torch.from_numpy(index),
        left_padded=left_padded,
    )


class BatchIterator:
    """Shuffled mini-batches over the examples of ``rows``.

    ``bucket_chunk > 0`` sorts examples by length inside consecutive chunks of
    ``bucket_chunk * batch_size`` shuffled examples, cuts each chunk into
    batches and shuffles the order of all batches. Every example is still seen
    exactly once per epoch and the chunk a row lands in is random, but rows of
    similar length share a batch, so dynamic padding wastes little work. Set it
    to 0 for the plain reference behaviour (uniformly random batches); transforms
    with a fixed width (FMLP's) always get uniformly random batches.
    """

    def __init__(
        self,
        rows: TrainRows,
        batch_size: int,
        shuffle: bool = True,
        generator: np.random.Generator | None = None,
        transform: RowTransform | None = None,
        bucket_chunk: int = 0,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise BatchingError(f"batch_size must be >= 1, got {batch_size}")
        if bucket_chunk < 0:
            raise BatchingError(f"bucket_chunk must be >= 0, got {bucket_chunk}")
        self.rows = rows
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.generator = generator if generator is not None else np.random.default_rng()
        self.transform = transform if transform is not None else AllPositions()
        self.bucket_chunk = int(bucket_chunk)
        self.drop_last = drop_last
        self.examples = self.transform.examples(rows)

    def __len__(self) -> int:
        n = len(self.examples)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def batch_indices(self) -> list[np.ndarray]:
        """The example indices of every batch of one epoch, in iteration order."""
        n = len(self.examples)
        order = self.generator.permutation(n) if self.shuffle else np.arange(n, dtype=np.int64)
        if self.bucket_chunk == 0 or not self.transform.dynamic_width:
            # fixed-width batches gain nothing from bucketing: keep them uniformly random
            batches = [order[i : i + self.batch_size] for i in range(0, n, self.batch_size)]
        else:
            chunk = self.bucket_chunk * self.batch_size
            lengths = self.examples.input_lengths
            batches = []
            for c in range(0, n, chunk):
                part = order[c : c + chunk]
                part = part[np.argsort(lengths[part], kind="stable")]
                batches.extend(
                    part[i : i + self.batch_size] for i in range(0, len(part), self.batch_size)
                )
            if self.shuffle:
                batches = [batches[i] for i in self.generator.permutation(len(batches))]
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        return batches

    def __iter__(self) -> Iterator[Batch]:
        for index in self.batch_indices():
            yield self.transform.collate(self.rows, self.examples, index)


def eval_batches(
    rows: EvalRows,
    batch_size: int,
    transform: RowTransform | None = None,
    sort_by_length: bool = True,
) -> Iterator[Batch]:
    """Evaluation batches; ``batch.row`` gives each example's index into ``rows``.

    Sorting by history length keeps dynamic padding tight; callers scatter
    results back through ``batch.row``.
    """
    if batch_size < 1:
        raise BatchingError(f"batch_size must be >= 1, got {batch_size}")
    transform = transform if transform is not None else AllPositions()
    n = len(rows)
    order = np.argsort(rows.history.lengths, kind="stable") if sort_by_length else np.arange(n)
    for i in range(0, n, batch_size):
        yield transform.collate_eval(rows, order[i : i + batch_size].astype(np.int64))


__all__ = [
    "AllPositions",
    "Batch",
    "BatchIterator",
    "BatchingError",
    "Examples",
    "PrefixExpansion",
    "RowTransform",
    "eval_batches",
]
