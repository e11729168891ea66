"""The synthetic generator: deterministic, patterns recoverable, transitions learnable."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import polars as pl
import pytest

from models.data.preprocess import prepare
from models.data.synthetic import MINING_SPAN, generate, write


@pytest.fixture(scope="module")
def small():
    return generate(num_users=200, num_items=150, num_patterns=20, seed=11)


def test_deterministic_per_seed(small):
    again = generate(num_users=200, num_items=150, num_patterns=20, seed=11)
    assert again.interactions.equals(small.interactions)
    assert again.patterns == small.patterns
    other = generate(num_users=200, num_items=150, num_patterns=20, seed=12)
    assert not other.interactions.equals(small.interactions)


def test_shape_and_ids(small):
    df = small.interactions
    assert df.columns == ["user_id", "item_id", "timestamp"]
    assert df["user_id"].n_unique() == 200
    assert df["user_id"].str.starts_with("u").all() and df["item_id"].str.starts_with("i").all()
    lengths = df.group_by("user_id").len()["len"]
    assert lengths.min() >= 5 and lengths.max() <= 30
    assert len(small.patterns) == 20 and len(set(small.patterns)) == 20
    assert all(2 <= len(p) <= 5 for p in small.patterns)
    # Every user's timestamps are distinct, so the chronological order is unambiguous.
    dup = df.group_by("user_id").agg(dup=pl.col("timestamp").is_duplicated().any())
    assert not dup["dup"].any()


def _occurs(seq: list[str], pattern: tuple[str, ...]) -> bool:
    """pattern is a subsequence of some window of MINING_SPAN consecutive items."""
    for start in range(len(seq)):
        window, k = seq[start : start + MINING_SPAN], 0
        for item in window:
            if k < len(pattern) and item == pattern[k]:
                k += 1
        if k == len(pattern):
            return True
    return False


def test_planted_patterns_are_frequent_in_the_mining_input(small):
    d = prepare(small.interactions)
    mining = [d.item_ids[s].tolist() for s in d.split().mining]
    support = [sum(_occurs(seq, p) for seq in mining) for p in small.patterns]
    assert np.mean([s >= 2 for s in support]) >= 0.8, support


def test_next_item_transitions_beat_popularity(small):
    d = prepare(small.interactions)
    seqs = d.sequences.to_lists()
    popularity, follows = Counter(), defaultdict(Counter)
    for seq in seqs:
        history = seq[:-1]
        popularity.update(history)
        for a, b in zip(history, history[1:], strict=False):
            follows[a][b] += 1
    top = {i for i, _ in popularity.most_common(10)}
    pop_hits = np.mean([s[-1] in top for s in seqs])
    markov_hits = np.mean([s[-1] in {i for i, _ in follows[s[-2]].most_common(10)} for s in seqs])
    assert markov_hits > 2 * pop_hits, (markov_hits, pop_hits)


def test_noise_free_users_are_only_patterns():
    data = generate(num_users=30, num_items=60, num_patterns=5, noise=0.0, min_len=2, seed=1)
    d = prepare(data.interactions, user_core=1, item_core=1)
    planted = {i for p in data.patterns for i in p}
    assert set(d.item_ids[1:]) <= planted


def test_parameter_validation():
    with pytest.raises(ValueError, match="pattern_len"):
        generate(pattern_len=(1, 3))
    with pytest.raises(ValueError, match="noise"):
        generate(noise=1.5)
    with pytest.raises(ValueError, match="min_len"):
        generate(min_len=10, max_len=5)


def test_write_rejects_unknown_or_gzipped_parquet(tmp_path, small):
    with pytest.raises(ValueError, match="format"):
        write(tmp_path / "x.xlsx", small)
    with pytest.raises(ValueError, match="Parquet"):
        write(tmp_path / "x.parquet.gz", small)
    assert (
        write(tmp_path / "x.dat", small, "csv").read_text().startswith("user_id,item_id,timestamp")
    )
