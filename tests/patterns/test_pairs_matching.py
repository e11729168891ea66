"""The pairs trie walk (issue #15) against a plain-Python brute force and
against the walk it replaced, which expanded every trie child of a state.

The walk now expands a state through its children or through the positions
left in its source, whichever is fewer; both must give the very same matches,
so the sampled pairs stay identical for every seed."""

from __future__ import annotations

import functools

import numpy as np
import pytest

import models.patterns.pairs as pairs_module
from models.data.sequences import Sequences
from models.patterns import Patterns, build_pairs, mine_patterns
from models.patterns.arrays import _chunks, _positions
from models.patterns.pairs import _build_trie, _match_chunk

# -- references -------------------------------------------------------------------


def is_subsequence(pattern: list[int], seq: list[int]) -> bool:
    i = 0
    for x in seq:
        if i < len(pattern) and x == pattern[i]:
            i += 1
    return i == len(pattern)


def brute_force(sources: list[list[int]], patterns: list[list[int]], match: str, alpha: int) -> set:
    """Every (source, pattern) with the pattern a subsequence of the source
    ("anywhere") or of some ``alpha`` consecutive positions of it ("window")."""
    out = set()
    for s, seq in enumerate(sources):
        for p, pattern in enumerate(patterns):
            if match == "anywhere":
                hit = is_subsequence(pattern, seq)
            else:
                hit = any(is_subsequence(pattern, seq[j : j + alpha]) for j in range(len(seq)))
            if hit:
                out.add((s, p))
    return out


# The walk before issue #15: every state expands into all trie children of its node.
old_match_chunk = functools.partial(pairs_module._match_chunk, expand="children")


# -- synthetic inputs -------------------------------------------------------------


def random_case(seed: int) -> tuple[list[list[int]], list[list[int]]]:
    """Sources and unique patterns (length 1..4) over a small catalogue, so items
    repeat in both; some sources are empty or shorter than the patterns, and
    item 1 is popular: it starts many patterns (a node with many children)."""
    rng = np.random.default_rng(seed)
    n_items = int(rng.integers(3, 30))
    p_pop = rng.dirichlet(np.full(n_items, 0.5))
    sources = []
    for _ in range(int(rng.integers(1, 40))):
        length = int(rng.choice([0, 1, 2, 3, rng.integers(4, 12), rng.integers(12, 60)]))
        sources.append((rng.choice(n_items, size=length, p=p_pop) + 1).tolist())
    patterns = {}
    for _ in range(int(rng.integers(0, 120))):
        length = int(rng.integers(1, 5))
        row = (rng.choice(n_items, size=length, p=p_pop) + 1).tolist()
        if rng.random() < 0.3:
            row[0] = 1  # the popular first item
        patterns[tuple(row)] = None
    return sources, [list(p) for p in patterns]


def fan_case() -> tuple[list[list[int]], list[list[int]]]:
    """A popular item with hundreds of children and grandchildren, sources
    short and long: short ones take the position side, long ones the children."""
    rng = np.random.default_rng(11)
    patterns = [[1]] + [[1, x] for x in range(2, 400)] + [[1, x, x] for x in range(2, 400, 3)]
    patterns += [[1, x, 1, y] for x, y in rng.integers(2, 60, size=(300, 2)).tolist()]
    patterns += [[x, 1] for x in range(2, 50)] + [[x] for x in range(2, 30)]
    patterns = [list(p) for p in dict.fromkeys(tuple(p) for p in patterns)]
    sources = [[1, 2], [1], [2, 1, 2, 2], [1, 5, 1, 5, 7]]
    sources += [rng.integers(1, 60, size=int(n)).tolist() for n in rng.integers(0, 25, size=60)]
    sources += [rng.integers(1, 450, size=int(n)).tolist() for n in rng.integers(300, 700, size=4)]
    sources += [[1] * 8 + rng.integers(2, 400, size=40).tolist()]
    return sources, patterns


def chunk_matches(sources: list[list[int]], patterns: list[list[int]], match: str, alpha: int,
                  chunk_positions: int, fn=_match_chunk) -> set:
    seqs, pats = Sequences.from_lists(sources), Sequences.from_lists(patterns)
    radix = max(int(seqs.items.max(initial=0)), int(pats.items.max(initial=0))) + 1
    trie = _build_trie(pats, radix)
    row_of, end_of = _positions(seqs)
    out = set()
    for lo, hi in _chunks(seqs, chunk_positions):
        if len(patterns) and hi > lo:
            src, pat = fn(seqs.items, lo, hi, row_of, end_of, trie, match == "window", alpha)
            assert np.all(np.diff(src * len(patterns) + pat) > 0)  # sorted, no duplicate
            out |= set(zip(src.tolist(), pat.tolist(), strict=True))
    return out


def old_build_pairs(monkeypatch, *args, **kwargs):
    with monkeypatch.context() as m:
        m.setattr(pairs_module, "_match_chunk", old_match_chunk)
        return build_pairs(*args, **kwargs)


def assert_same_pairs(a, b) -> None:
    assert np.array_equal(a.source_index, b.source_index)
    assert np.array_equal(a.pattern_index, b.pattern_index)
    assert np.array_equal(a.matches, b.matches)


# -- tests ------------------------------------------------------------------------


@pytest.mark.parametrize("match", ["anywhere", "window"])
@pytest.mark.parametrize("seed", range(40))
def test_matches_brute_force_on_random_cases(seed: int, match: str) -> None:
    sources, patterns = random_case(seed)
    alpha = 1 + seed % 6
    truth = brute_force(sources, patterns, match, alpha)
    for chunk in (1, 7, 10**9):
        assert chunk_matches(sources, patterns, match, alpha, chunk) == truth


@pytest.mark.parametrize("match", ["anywhere", "window"])
@pytest.mark.parametrize("alpha", [1, 2, 3, 5, 8])
def test_popular_item_with_many_children(match: str, alpha: int, monkeypatch) -> None:
    sources, patterns = fan_case()
    sides = {"children": 0, "positions": 0}
    children, positions = pairs_module._expand_children, pairs_module._expand_positions

    def count_children(*args):
        sides["children"] += int(args[-1].sum())
        return children(*args)

    def count_positions(*args):
        sides["positions"] += int(args[-1].sum())
        return positions(*args)

    monkeypatch.setattr(pairs_module, "_expand_children", count_children)
    monkeypatch.setattr(pairs_module, "_expand_positions", count_positions)
    truth = brute_force(sources, patterns, match, alpha)
    assert chunk_matches(sources, patterns, match, alpha, 10**9) == truth
    assert chunk_matches(sources, patterns, match, alpha, 50) == truth
    assert sides["positions"] > 0  # the popular node was walked from the positions
    if match == "anywhere" or alpha > 2:
        assert sides["children"] > 0


@pytest.mark.parametrize("match", ["anywhere", "window"])
def test_same_as_the_old_walk_on_mined_patterns(match: str) -> None:
    rng = np.random.default_rng(5)
    rows = [rng.zipf(1.6, size=int(rng.integers(1, 40))).clip(1, 80).tolist() for _ in range(400)]
    mined = mine_patterns(Sequences.from_lists(rows), alpha=5, beta=2)
    patterns = mined.seqs.to_lists()
    assert len(patterns) > 500
    for chunk in (13, 5_000):
        new = chunk_matches(rows, patterns, match, 5, chunk)
        assert new == chunk_matches(rows, patterns, match, 5, chunk, fn=old_match_chunk)
    assert new == brute_force(rows, patterns, match, 5)


@pytest.mark.parametrize("match", ["anywhere", "window"])
@pytest.mark.parametrize("seed", [0, 1, 2024])
def test_build_pairs_identical_to_the_old_walk(match: str, seed: int, monkeypatch) -> None:
    for case in (*(random_case(s) for s in range(100, 110)), fan_case()):
        sources, patterns = case
        src = Sequences.from_lists(sources)
        pat = Patterns(Sequences.from_lists(patterns), np.ones(len(patterns), dtype=np.int64))
        for cap, chunk in ((1, 5_000), (3, 9), (10, 5_000)):
            kw = dict(max_per_source=cap, match=match, alpha=4, seed=seed, chunk_positions=chunk)
            assert_same_pairs(build_pairs(src, pat, **kw), old_build_pairs(monkeypatch, src, pat, **kw))


@pytest.mark.shared_data
@pytest.mark.parametrize("match", ["anywhere", "window"])
def test_beauty_pairs_identical_to_the_old_walk(beauty_split, match: str, monkeypatch) -> None:
    mined = mine_patterns(beauty_split.mining)
    new = build_pairs(beauty_split.pair_source, mined, match=match)
    assert_same_pairs(new, old_build_pairs(monkeypatch, beauty_split.pair_source, mined, match=match))
    if match == "anywhere":
        assert len(new) == 44_471
