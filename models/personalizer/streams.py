"""Persistent batch streams for the meta step (quirk Q38: no loader per meta step)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from models.batching import Batch, BatchIterator, RowTransform
from models.data.sequences import EvalRows, RowSource, Sequences, TrainRows
from models.personalizer.errors import PersonalizerError


class _Stream:
    """Endless shuffled batches. Pass ``k`` over the data is the batch list of
    ``BatchIterator.batch_indices`` under ``default_rng([seed, tag, k])`` (length
    bucketing included, so meta-step batches pad as little as training batches),
    which makes ``(pass, batch position)`` the whole state."""

    def __init__(self, order: BatchIterator, seed: int, tag: int) -> None:
        if len(order.examples) == 0:
            raise PersonalizerError("a meta-step batch stream needs at least one row")
        self.order, self.seed, self.tag = order, seed, tag
        self.pass_index, self.position = 0, 0
        self._batches: list[np.ndarray] | None = None

    def next_index(self) -> np.ndarray:
        if self._batches is None:
            self.order.generator = np.random.default_rng([self.seed, self.tag, self.pass_index])
            self._batches = self.order.batch_indices()
        index = self._batches[self.position]
        self.position += 1
        if self.position >= len(self._batches):
            self.pass_index, self.position, self._batches = self.pass_index + 1, 0, None
        return index

    def state(self) -> list[int]:
        return [self.pass_index, self.position]

    def restore(self, state: Sequence[int]) -> None:
        self.pass_index, self.position = int(state[0]), int(state[1])
        self._batches = None


class TrainStream(_Stream):
    def __init__(
        self, rows: TrainRows, transform: RowTransform, batch_size: int, seed: int, tag: int, bucket_chunk: int = 0
    ) -> None:
        it = BatchIterator(rows, batch_size, transform=transform, bucket_chunk=bucket_chunk)
        super().__init__(it, seed, tag)

    def next(self) -> Batch:
        return self.order.transform.collate(self.order.rows, self.order.examples, self.next_index())


class HeldoutStream(_Stream):
    """Validation histories with their validation target as the only next-item
    example (the last valid position); test items never enter."""

    def __init__(
        self, rows: EvalRows, transform: RowTransform, batch_size: int, seed: int, tag: int, bucket_chunk: int = 0
    ) -> None:
        self.rows, self.transform = rows, transform
        # stand-in rows with the same input lengths, only to reuse BatchIterator's bucketing
        lengths = np.minimum(rows.history.lengths, transform.max_len) + 1
        shape = TrainRows.build(Sequences.from_lengths(np.ones(int(lengths.sum())), lengths), RowSource.ORIGINAL)
        super().__init__(BatchIterator(shape, batch_size, bucket_chunk=bucket_chunk), seed, tag)

    def next(self) -> Batch:
        return heldout_batch(self.rows, self.next_index(), self.transform)


def heldout_batch(rows: EvalRows, index: np.ndarray, transform: RowTransform) -> Batch:
    batch = transform.collate_eval(rows, np.asarray(index, dtype=np.int64))
    if transform.left_padded:  # single-target layout (FMLP): (B, L) input, (B, 1) target
        return batch
    # all-positions layout: the target sits at the last input slot, every other slot is 0
    target = torch.zeros_like(batch.input)  # (B, T)
    target[torch.arange(len(batch)), batch.lengths - 1] = batch.target[:, 0]
    return Batch(batch.input, target, batch.lengths, batch.source, batch.row)
