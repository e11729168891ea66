"""Pattern mining against a plainly written brute-force miner and the measured counts."""

from __future__ import annotations

from collections import Counter
from itertools import combinations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.data.sequences import RowSource, Sequences
from models.patterns import Patterns, mine_patterns, pattern_rows
from models.progress import Cancelled, ProgressEvent


def brute_force_mine(
    rows: list[list[int]], alpha: int, beta: int
) -> list[tuple[tuple[int, ...], int]]:
    """Every index tuple j1 < ... < jk with jk - j1 <= alpha - 1, k >= 2; support
    = number of sequences holding at least one; sorted by (-support, items)."""
    support: Counter[tuple[int, ...]] = Counter()
    for row in rows:
        seen: set[tuple[int, ...]] = set()
        for j1 in range(len(row)):
            rest = range(j1 + 1, min(len(row), j1 + alpha))
            for k in range(1, alpha):
                for tail in combinations(rest, k):
                    seen.add((row[j1],) + tuple(row[j] for j in tail))
        support.update(seen)
    kept = [(p, s) for p, s in support.items() if s >= beta]
    return sorted(kept, key=lambda ps: (-ps[1], ps[0]))


def as_list(patterns: Patterns) -> list[tuple[tuple[int, ...], int]]:
    return [
        (tuple(p), int(s)) for p, s in zip(patterns.seqs.to_lists(), patterns.support, strict=True)
    ]


rows_strategy = st.lists(
    st.lists(st.integers(1, 6), min_size=0, max_size=12), min_size=1, max_size=12
)


@settings(max_examples=150, deadline=None)
@given(
    rows=rows_strategy,
    alpha=st.integers(2, 5),
    beta=st.integers(1, 3),
    chunk=st.one_of(st.just(1_000_000), st.integers(1, 25)),
)
def test_matches_brute_force(rows: list[list[int]], alpha: int, beta: int, chunk: int) -> None:
    # Small chunks split the sequences into many groups whose supports must add up.
    mined = mine_patterns(Sequences.from_lists(rows), alpha=alpha, beta=beta, chunk_positions=chunk)
    assert as_list(mined) == brute_force_mine(rows, alpha, beta)


def brute_force_budget(
    rows: list[list[int]], alpha: int, beta: int, budget: int
) -> tuple[list[tuple[tuple[int, ...], int]], int]:
    """All patterns at beta, then the smallest threshold >= beta keeping <= budget."""
    everything = brute_force_mine(rows, alpha, beta)
    threshold = beta
    while sum(s >= threshold for _, s in everything) > budget:
        threshold += 1
    return [(p, s) for p, s in everything if s >= threshold], threshold


@settings(max_examples=150, deadline=None)
@given(
    rows=rows_strategy,
    alpha=st.integers(2, 5),
    beta=st.integers(1, 3),
    budget=st.integers(1, 40),
    chunk=st.one_of(st.just(1_000_000), st.integers(1, 25)),
)
def test_budget_matches_brute_force(
    rows: list[list[int]], alpha: int, beta: int, budget: int, chunk: int
) -> None:
    mined = mine_patterns(
        Sequences.from_lists(rows), alpha=alpha, beta=beta, max_patterns=budget, chunk_positions=chunk
    )
    expected, threshold = brute_force_budget(rows, alpha, beta, budget)
    assert as_list(mined) == expected
    assert len(mined) <= budget
    assert mined.min_support == threshold


def test_budget_never_splits_a_support_level() -> None:
    # (1, 2), (2, 3) and (3, 4) all have support 2: a budget of 2 keeps none of them.
    rows = [[1, 2, 3, 4], [1, 2, 3, 4], [5, 6]]
    mined = mine_patterns(Sequences.from_lists(rows), alpha=2, beta=2, max_patterns=2)
    assert len(mined) == 0 and mined.min_support == 3


def test_budget_is_validated() -> None:
    with pytest.raises(ValueError, match="max_patterns"):
        mine_patterns(Sequences.from_lists([[1, 2]]), max_patterns=0)


def test_slide_example() -> None:
    # Spec §2.1: "1 2 3 4 5", window 3, min frequency 2 -> 12, 13, 23, 123, ... when shared.
    rows = [[1, 2, 3, 4, 5], [1, 2, 3, 9, 9]]
    mined = as_list(mine_patterns(Sequences.from_lists(rows), alpha=3, beta=2))
    assert mined == [((1, 2), 2), ((1, 2, 3), 2), ((1, 3), 2), ((2, 3), 2)]


def test_repeated_items_and_support_counts_sequences_not_occurrences() -> None:
    rows = [[7, 7, 7, 7], [7, 7], [5, 7]]
    mined = as_list(mine_patterns(Sequences.from_lists(rows), alpha=3, beta=1))
    assert mined == [((7, 7), 2), ((5, 7), 1), ((7, 7, 7), 1)]


def test_span_limit_is_exclusive_of_gap_beyond_alpha() -> None:
    # 1 and 2 are 4 positions apart: inside alpha=5, outside alpha=4.
    rows = [[1, 8, 8, 8, 2], [1, 9, 9, 9, 2]]
    assert ((1, 2), 2) in as_list(mine_patterns(Sequences.from_lists(rows), alpha=5, beta=2))
    assert as_list(mine_patterns(Sequences.from_lists(rows), alpha=4, beta=2)) == []


def test_sorted_by_support_then_lexicographic() -> None:
    rng = np.random.default_rng(0)
    rows = [rng.integers(1, 15, size=rng.integers(3, 20)).tolist() for _ in range(200)]
    mined = mine_patterns(Sequences.from_lists(rows), alpha=4, beta=2)
    keys = [(-s, tuple(p)) for p, s in zip(mined.seqs.to_lists(), mined.support, strict=True)]
    assert len(mined) > 100
    assert keys == sorted(keys)
    assert len(set(tuple(p) for p in mined.seqs.to_lists())) == len(mined)
    assert mined.seqs.lengths.min() >= 2 and mined.seqs.lengths.max() <= 4


def test_empty_inputs() -> None:
    assert len(mine_patterns(Sequences.empty())) == 0
    assert len(mine_patterns(Sequences.from_lists([[1, 2, 3]]), beta=2)) == 0


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"alpha": 1}, "alpha"),
        ({"alpha": 2.5}, "alpha"),
        ({"beta": 0}, "beta"),
        ({"chunk_positions": 0}, "chunk_positions"),
    ],
)
def test_bad_parameters_raise(kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        mine_patterns(Sequences.from_lists([[1, 2]]), **kwargs)


def test_padding_item_rejected() -> None:
    with pytest.raises(ValueError, match="ids must be >= 1"):
        mine_patterns(Sequences.from_lists([[1, 0, 2]]))


def test_progress_and_cancellation() -> None:
    events: list[ProgressEvent] = []
    rows = Sequences.from_lists([[1, 2, 3, 4]] * 3)
    mine_patterns(rows, alpha=3, progress=events.append)
    assert events and all(e.stage == "mine" for e in events)
    assert events[-1].done == events[-1].total == 3

    def cancel(event: ProgressEvent) -> None:
        raise Cancelled

    with pytest.raises(Cancelled):
        mine_patterns(rows, progress=cancel)


def test_pattern_rows() -> None:
    mined = mine_patterns(Sequences.from_lists([[1, 2, 3], [1, 2, 3]]), alpha=3, beta=2)
    rows = pattern_rows(mined)
    assert rows.seqs.to_lists() == mined.seqs.to_lists()
    assert (rows.source == RowSource.PATTERN).all() and (rows.user == 0).all()
    assert rows.counts()["pattern"] == len(mined) == 4


@pytest.mark.shared_data
def test_real_prefix_matches_brute_force(beauty_split) -> None:
    rows = beauty_split.mining.take(np.arange(400)).to_lists()
    mined = mine_patterns(Sequences.from_lists(rows), alpha=5, beta=2)
    assert as_list(mined) == brute_force_mine(rows, 5, 2)


@pytest.mark.shared_data
def test_beauty_measured_counts(beauty_split) -> None:
    mined = mine_patterns(beauty_split.mining, alpha=5, beta=2)
    assert len(mined) == 40_664
    assert mined.length_counts() == {2: 28_108, 3: 10_210, 4: 2_091, 5: 255}
    assert int(mined.support.max()) == 68
    chunked = mine_patterns(beauty_split.mining, alpha=5, beta=2, chunk_positions=20_000)
    assert chunked.seqs.to_lists() == mined.seqs.to_lists()
    assert np.array_equal(chunked.support, mined.support)


@pytest.mark.shared_data
def test_sports_measured_counts(sports_split) -> None:
    mined = mine_patterns(sports_split.mining, alpha=5, beta=2)
    assert len(mined) == 21_999
    assert mined.length_counts() == {2: 20_826, 3: 1_048, 4: 112, 5: 13}
    assert int(mined.support.max()) == 60


@pytest.mark.shared_data
def test_beauty_unchanged_under_the_default_budget(beauty_split) -> None:
    from models.patterns import pattern_budget

    budget = pattern_budget(len(beauty_split.train))  # 2 x 22,363 original rows
    mined = mine_patterns(beauty_split.mining, alpha=5, beta=2, max_patterns=budget)
    assert len(mined) == 40_664 and mined.min_support == 2
