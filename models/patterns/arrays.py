"""Flat-array helpers shared by mining and pairing: input checks, int64 key
packing, per-position rows and chunks of whole sequences."""

from __future__ import annotations

import numpy as np
import polars as pl

from models.data.sequences import Sequences

_INT64_MAX = np.iinfo(np.int64).max


def _check_sequences(sequences: Sequences, what: str) -> None:
    if len(sequences.items) and int(sequences.items.min()) < 1:
        raise ValueError(f"{what} contain item id {int(sequences.items.min())}; ids must be >= 1")


def _check_packable(high: int, radix: int, what: str) -> None:
    """Packed keys are ``high * radix + low``; refuse instead of silently overflowing."""
    if high * radix > _INT64_MAX:
        raise OverflowError(f"{what}: {high} x {radix} does not fit in int64 keys")


def _positions(sequences: Sequences) -> tuple[np.ndarray, np.ndarray]:
    """Per flat position: its row and the exclusive end of that row."""
    row_of = np.repeat(np.arange(len(sequences), dtype=np.int64), sequences.lengths)
    return row_of, sequences.offsets[1:][row_of]


def _chunks(sequences: Sequences, max_positions: int) -> list[tuple[int, int]]:
    """Flat position ranges of whole rows, about ``max_positions`` each, so the
    vectorised candidate arrays stay bounded on large datasets."""
    if int(max_positions) != max_positions or max_positions < 1:
        raise ValueError(f"chunk_positions must be an integer >= 1, got {max_positions}")
    starts = sequences.offsets[:-1]
    if len(starts) == 0:
        return []
    bucket = starts // max_positions
    cuts = np.concatenate([[0], np.flatnonzero(np.diff(bucket)) + 1, [len(starts)]])
    return [
        (int(sequences.offsets[a]), int(sequences.offsets[b]))
        for a, b in zip(cuts[:-1], cuts[1:], strict=True)
    ]


def _to_int64(column: pl.Series) -> np.ndarray:
    return column.to_numpy().astype(np.int64, copy=False)
