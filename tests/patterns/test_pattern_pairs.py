"""Pair building against the reference's plain per-source scan."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.data.sequences import Sequences
from models.patterns import Patterns, build_pairs, mine_patterns


def is_subsequence(pattern: list[int], seq: list[int]) -> bool:
    it = iter(seq)
    return all(any(x == y for y in it) for x in pattern)


def reference_matches(
    sources: list[list[int]], patterns: list[list[int]], match: str, alpha: int
) -> list[set[int]]:
    """For each source, the pattern rows it contains, by testing every pattern."""
    out = []
    for seq in sources:
        found = set()
        for index, pattern in enumerate(patterns):
            if match == "anywhere":
                hit = is_subsequence(pattern, seq)
            else:  # the whole occurrence inside alpha consecutive positions
                hit = any(is_subsequence(pattern, seq[j : j + alpha]) for j in range(len(seq)))
            if hit:
                found.add(index)
        out.append(found)
    return out


def make_patterns(rows: list[list[int]]) -> Patterns:
    return Patterns(Sequences.from_lists(rows), np.ones(len(rows), dtype=np.int64))


def selected(pairs, n_sources: int) -> list[set[int]]:
    out: list[set[int]] = [set() for _ in range(n_sources)]
    for s, p in zip(pairs.source_index.tolist(), pairs.pattern_index.tolist(), strict=True):
        assert p not in out[s], "a pattern was paired twice with one source"
        out[s].add(p)
    return out


sources_strategy = st.lists(st.lists(st.integers(1, 6), max_size=14), min_size=1, max_size=10)
patterns_strategy = st.lists(
    st.lists(st.integers(1, 6), min_size=1, max_size=5), min_size=0, max_size=40
).map(lambda rows: [list(t) for t in dict.fromkeys(tuple(r) for r in rows)])


@settings(max_examples=150, deadline=None)
@given(
    sources=sources_strategy,
    patterns=patterns_strategy,
    match=st.sampled_from(["anywhere", "window"]),
    alpha=st.integers(1, 6),
    cap=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
    chunk=st.one_of(st.just(200_000), st.integers(1, 30)),
)
def test_matches_reference_scan(sources, patterns, match, alpha, cap, seed, chunk) -> None:
    expected = reference_matches(sources, patterns, match, alpha)
    src, pat = Sequences.from_lists(sources), make_patterns(patterns)
    everything = build_pairs(
        src, pat, max_per_source=1000, match=match, alpha=alpha, seed=seed, chunk_positions=chunk
    )
    assert selected(everything, len(sources)) == expected
    assert everything.matches.tolist() == [len(e) for e in expected]

    sampled = build_pairs(
        src, pat, max_per_source=cap, match=match, alpha=alpha, seed=seed, chunk_positions=10**9
    )
    # sampled chunk by chunk (the default streaming): exactly the one-chunk choice
    streamed = build_pairs(
        src, pat, max_per_source=cap, match=match, alpha=alpha, seed=seed, chunk_positions=chunk
    )
    assert np.array_equal(streamed.source_index, sampled.source_index)
    assert np.array_equal(streamed.pattern_index, sampled.pattern_index)
    assert np.array_equal(streamed.matches, sampled.matches)
    for chosen, truth in zip(selected(sampled, len(sources)), expected, strict=True):
        assert chosen <= truth
        assert len(chosen) == min(cap, len(truth))
    assert np.all(np.diff(sampled.source_index) >= 0)
    again = build_pairs(src, pat, max_per_source=cap, match=match, alpha=alpha, seed=seed)
    assert np.array_equal(again.pattern_index, sampled.pattern_index)


def test_anywhere_ignores_span_window_respects_it() -> None:
    sources = Sequences.from_lists([[1, 9, 9, 9, 9, 9, 2], [1, 2]])
    patterns = make_patterns([[1, 2]])
    anywhere = build_pairs(sources, patterns)
    window = build_pairs(sources, patterns, match="window", alpha=5)
    assert anywhere.source_index.tolist() == [0, 1]
    assert window.source_index.tolist() == [1]


def test_seed_changes_the_subset_and_subsets_are_uniform() -> None:
    # 3000 copies of one source containing 5 patterns, 2 kept each: every
    # pattern should be kept ~40 % of the time and each of the 10 pairs ~10 %.
    seq = [1, 2, 3, 4, 5, 6]
    patterns = make_patterns([[1, 2], [2, 3], [3, 4], [4, 5], [5, 6], [6, 1]])
    sources = Sequences.from_lists([seq] * 3000)
    pairs = build_pairs(sources, patterns, max_per_source=2, seed=7)
    assert len(pairs) == 6000 and set(pairs.pattern_index.tolist()) == {0, 1, 2, 3, 4}
    per_pattern = np.bincount(pairs.pattern_index, minlength=5)
    assert np.all(np.abs(per_pattern - 1200) < 5 * np.sqrt(3000 * 0.4 * 0.6))
    subsets = Counter(tuple(p) for p in pairs.pattern_index.reshape(-1, 2).tolist())
    assert len(subsets) == 10
    assert all(abs(c - 300) < 5 * np.sqrt(3000 * 0.1 * 0.9) for c in subsets.values())
    other = build_pairs(sources, patterns, max_per_source=2, seed=8)
    assert not np.array_equal(other.pattern_index, pairs.pattern_index)


def test_materialise() -> None:
    sources = Sequences.from_lists([[1, 2, 3], [4, 5], [3, 1]])
    patterns = make_patterns([[1, 3], [4, 5], [2, 3]])
    pairs = build_pairs(sources, patterns)
    src, tgt = pairs.materialise(sources, patterns)
    assert src.to_lists() == [[1, 2, 3], [1, 2, 3], [4, 5]]
    assert tgt.to_lists() == [[1, 3], [2, 3], [4, 5]]
    with pytest.raises(ValueError, match="sources"):
        pairs.materialise(Sequences.from_lists([[1, 2]]), patterns)


def test_mined_patterns_pair_with_their_sources() -> None:
    rng = np.random.default_rng(3)
    rows = [rng.integers(1, 12, size=rng.integers(2, 15)).tolist() for _ in range(60)]
    seqs = Sequences.from_lists(rows)
    mined = mine_patterns(seqs, alpha=4, beta=2)
    pairs = build_pairs(seqs, mined, max_per_source=10_000, match="window", alpha=4)
    # Mining and window-pairing share the span rule: support counts the same sources.
    assert np.array_equal(np.bincount(pairs.pattern_index, minlength=len(mined)), mined.support)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"match": "prefix"}, "match"),
        ({"max_per_source": 0}, "max_per_source"),
        ({"alpha": 0}, "alpha"),
        ({"chunk_positions": -5}, "chunk_positions"),
    ],
)
def test_bad_parameters_raise(kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        build_pairs(Sequences.from_lists([[1, 2]]), make_patterns([[1, 2]]), **kwargs)


def test_bad_patterns_raise() -> None:
    src = Sequences.from_lists([[1, 2]])
    with pytest.raises(ValueError, match="duplicate"):
        build_pairs(src, make_patterns([[1, 2], [1, 2]]))
    with pytest.raises(ValueError, match="empty"):
        build_pairs(src, make_patterns([[1, 2], []]))
    with pytest.raises(ValueError, match="ids must be >= 1"):
        build_pairs(Sequences.from_lists([[0, 2]]), make_patterns([[1, 2]]))


def test_no_patterns_or_no_sources() -> None:
    assert len(build_pairs(Sequences.from_lists([[1, 2]]), make_patterns([]))) == 0
    empty = build_pairs(Sequences.empty(), make_patterns([[1, 2]]))
    assert len(empty) == 0 and len(empty.matches) == 0


@pytest.mark.shared_data
def test_beauty_pair_count(beauty_split) -> None:
    mined = mine_patterns(beauty_split.mining)
    pairs = build_pairs(beauty_split.pair_source, mined)
    assert len(pairs) == 44_471
    # one chunk draws every match's key at once, as before streaming: same pairs
    chunked = build_pairs(beauty_split.pair_source, mined, chunk_positions=10**9)
    assert np.array_equal(chunked.pattern_index, pairs.pattern_index)
    assert np.array_equal(chunked.source_index, pairs.source_index)
    # Spot-check a sample of users against the plain scan over all patterns.
    rows = mined.seqs.to_lists()
    users = np.random.default_rng(0).choice(len(beauty_split.pair_source), 25, replace=False)
    for u in users.tolist():
        seq = beauty_split.pair_source[u].tolist()
        truth = {i for i, p in enumerate(rows) if is_subsequence(p, seq)}
        assert int(pairs.matches[u]) == len(truth)
        chosen = set(pairs.pattern_index[pairs.source_index == u].tolist())
        assert chosen <= truth and len(chosen) == min(10, len(truth))
