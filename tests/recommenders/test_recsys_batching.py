from __future__ import annotations

import numpy as np
import pytest

from models.batching import (
    AllPositions,
    BatchingError,
    BatchIterator,
    PrefixExpansion,
    eval_batches,
)
from models.data.sequences import EvalRows, RowSource, Sequences, TrainRows


def _rows(lists, source=RowSource.ORIGINAL):
    seqs = Sequences.from_lists(lists)
    return TrainRows.build(seqs, source, np.arange(1, len(lists) + 1))


def test_dynamic_padding_pads_to_longest_row_of_the_batch():
    rows = _rows([[1, 2, 3], [4, 5], [6, 7, 8, 9, 10]])
    it = BatchIterator(rows, batch_size=2, shuffle=False, transform=AllPositions(max_len=50))
    first, second = list(it)
    assert first.input.tolist() == [[1, 2], [4, 0]]
    assert first.target.tolist() == [[2, 3], [5, 0]]
    assert first.lengths.tolist() == [2, 1]
    assert first.row.tolist() == [0, 1]
    # the second batch has one row of 5 items: width 4, not 50
    assert second.input.shape == (1, 4)
    assert second.input.tolist() == [[6, 7, 8, 9]]
    assert second.target.tolist() == [[7, 8, 9, 10]]
    assert first.valid.tolist() == [[True, True], [True, False]]


def test_rows_longer_than_max_len_keep_their_last_items():
    rows = _rows([list(range(1, 11))])
    (batch,) = BatchIterator(rows, 4, shuffle=False, transform=AllPositions(max_len=3))
    assert batch.input.tolist() == [[7, 8, 9]]
    assert batch.target.tolist() == [[8, 9, 10]]
    assert batch.lengths.tolist() == [3]


def test_source_and_row_travel_with_the_batch():
    rows = _rows([[1, 2], [3, 4, 5]]).concat(_rows([[6, 7]], RowSource.REGENERATED))
    (batch,) = BatchIterator(rows, 8, shuffle=False)
    assert batch.source.tolist() == [0, 0, 2]
    assert batch.row.tolist() == [0, 1, 2]


def test_rows_need_two_items():
    with pytest.raises(BatchingError, match="at least 2"):
        BatchIterator(_rows([[1, 2], [3]]), 2)


def test_bucketing_sees_every_row_once_and_groups_similar_lengths():
    rng = np.random.default_rng(0)
    lists = [list(rng.integers(1, 50, size=rng.integers(2, 30))) for _ in range(500)]
    rows = _rows(lists)
    it = BatchIterator(rows, 16, generator=np.random.default_rng(1), bucket_chunk=8)
    batches = it.batch_indices()
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == list(range(500))
    lengths = it.examples.input_lengths
    spread_bucketed = np.mean([np.ptp(lengths[b]) for b in batches])
    plain = BatchIterator(
        rows, 16, generator=np.random.default_rng(1), bucket_chunk=0
    ).batch_indices()
    spread_plain = np.mean([np.ptp(lengths[b]) for b in plain])
    assert spread_bucketed < spread_plain / 3
    # padded width follows the batch's own longest row
    for index, batch in zip(
        batches,
        BatchIterator(rows, 16, generator=np.random.default_rng(1), bucket_chunk=8),
        strict=True,
    ):
        assert batch.input.shape[1] == lengths[index].max()


def test_shuffle_is_reproducible_from_the_generator():
    rows = _rows([[i, i + 1, i + 2] for i in range(1, 40)])
    a = BatchIterator(rows, 5, generator=np.random.default_rng(3)).batch_indices()
    b = BatchIterator(rows, 5, generator=np.random.default_rng(3)).batch_indices()
    c = BatchIterator(rows, 5, generator=np.random.default_rng(4)).batch_indices()
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_prefix_expansion_makes_one_left_padded_example_per_position():
    rows = _rows([[1, 2, 3, 4], [5, 6]])
    t = PrefixExpansion(max_len=5)
    ex = t.examples(rows)
    assert len(ex) == 3 + 1
    batches = list(BatchIterator(rows, 10, shuffle=False, transform=t))
    (b,) = batches
    assert b.left_padded
    assert b.input.tolist() == [
        [0, 0, 0, 0, 1],
        [0, 0, 0, 1, 2],
        [0, 0, 1, 2, 3],
        [0, 0, 0, 0, 5],
    ]
    assert b.target.tolist() == [[2], [3], [4], [6]]
    assert b.lengths.tolist() == [1, 2, 3, 1]
    assert b.row.tolist() == [0, 0, 0, 1]


def test_prefix_expansion_windows_long_rows_to_max_len():
    rows = _rows([list(range(1, 9))])  # 8 items, max_len 3: keep the last 4
    b = next(iter(BatchIterator(rows, 10, shuffle=False, transform=PrefixExpansion(max_len=3))))
    assert b.input.tolist() == [[0, 0, 5], [0, 5, 6], [5, 6, 7]]
    assert b.target.tolist() == [[6], [7], [8]]


def test_eval_batches_sort_by_length_and_report_rows():
    hist = Sequences.from_lists([[1, 2, 3], [4], [5, 6]])
    rows = EvalRows(hist, np.array([7, 8, 9]), np.array([1, 2, 3]))
    (b,) = eval_batches(rows, 8)
    assert b.row.tolist() == [1, 2, 0]
    assert b.input.tolist() == [[4, 0, 0], [5, 6, 0], [1, 2, 3]]
    assert b.target.tolist() == [[8], [9], [7]]
    (lb,) = eval_batches(rows, 8, PrefixExpansion(max_len=4))
    assert lb.input.tolist() == [[0, 0, 0, 4], [0, 0, 5, 6], [0, 1, 2, 3]]
