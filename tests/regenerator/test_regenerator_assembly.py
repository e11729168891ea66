"""Assembly of the regenerated training file and the planted-pattern recall."""

from __future__ import annotations

import numpy as np
import pytest
from regen_helpers import PLANTED, tiny_config

from models.data.sequences import RowSource, Sequences, TrainRows
from models.decoding import Decoded, decode
from models.regenerated import assemble, first_unique, in_source_order, planted_recall
from models.regenerator import RegeneratorConfig

EOS = 12  # num_items = 10


def _decoded() -> Decoded:
    sources = Sequences.from_lists([[1, 2, 3], [4, 5, 6], [7, 8]])
    raw = [
        [1, 2, EOS],  # user 1, k 0
        [2, 7, 3, 9],  # user 1, k 1: hit the length cap, no EOS
        [1, 2, EOS],  # user 2, k 0: duplicate of row 0
        [4, EOS],  # user 2, k 1: one item left -> dropped
        [8, 0, 7, EOS],  # user 3, k 0: emitted the pad id
        [EOS],  # user 3, k 1: empty
    ]
    return Decoded(Sequences.from_lists(raw), np.repeat([1, 2, 3], 2), np.tile([0, 1], 3),
                   np.repeat([0, 1, 2], 2), sources, num_items=10)


def _inputs() -> tuple[TrainRows, TrainRows]:
    original = TrainRows.build(Sequences.from_lists([[1, 2, 3], [4, 5, 6], [7, 8]]), RowSource.ORIGINAL,
                               np.array([1, 2, 3]))
    patterns = TrainRows.build(Sequences.from_lists([[1, 2], [4, 5]]), RowSource.PATTERN)
    return original, patterns


def _regenerated(rows: TrainRows) -> list[list[int]]:
    return rows.seqs.take(np.flatnonzero(rows.source == RowSource.REGENERATED)).to_lists()


def test_parity_assembly():
    original, patterns = _inputs()
    out = assemble(original, patterns, _decoded(), RegeneratorConfig.parity())
    assert _regenerated(out.rows) == [[1, 2], [2, 7, 3], [8, 0, 7]]  # last token always dropped
    assert out.rows.user[out.rows.source == RowSource.REGENERATED].tolist() == [1, 1, 3]
    assert out.rows.counts() == {"original": 6, "pattern": 2, "regenerated": 3}  # original twice
    s = out.stats
    assert (s["decoded"], s["duplicates_removed"], s["dropped_short"], s["regenerated"]) == (6, 1, 2, 3)
    assert (s["decodes_ended_with_eos"], s["decodes_hit_length_cap"]) == (5, 1)
    assert s["length_histogram"] == {2: 1, 3: 2}
    assert s["rows_with_pad"] == 1
    assert s["generative_share"] == pytest.approx(1 / 7)  # only the 7 of user 1 is new
    assert (s["memories_used"], s["rows_per_memory"]) == (2, {0: 2, 1: 1})
    assert s["original_copies"] == 2


def test_fixed_assembly_strips_only_eos_and_keeps_original_once():
    original, patterns = _inputs()
    out = assemble(original, patterns, _decoded(), RegeneratorConfig.fixed())
    assert _regenerated(out.rows) == [[1, 2], [2, 7, 3, 9], [8, 0, 7]]
    assert out.rows.counts() == {"original": 3, "pattern": 2, "regenerated": 3}
    assert out.stats["generative_share"] == pytest.approx(2 / 8)


def test_dedup_tells_a_trailing_pad_from_a_shorter_row():
    seqs = Sequences.from_lists([[1, 0], [1], [1, 0], [2], [1]])
    assert first_unique(seqs).tolist() == [0, 1, 3]


def test_assemble_checks_row_sources():
    original, patterns = _inputs()
    with pytest.raises(ValueError, match="pattern row 0 has source original"):
        assemble(original, original, _decoded(), RegeneratorConfig.parity())


def test_planted_recall():
    regen = TrainRows.build(Sequences.from_lists([[5, 1, 2, 3, 9], [4, 9, 5, 6], [8, 8]]),
                            RowSource.REGENERATED)
    other = TrainRows.build(Sequences.from_lists([[9, 8]]), RowSource.ORIGINAL)
    rows = regen.concat(other)
    planted = [(1, 2, 3), (4, 5, 6), (9, 8)]
    assert planted_recall(rows, planted) == pytest.approx(1 / 3)  # contiguous only
    assert planted_recall(rows, planted, window=4) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        planted_recall(rows, [])


def test_end_to_end_regeneration_recovers_planted_patterns(trained, planted):
    model, _ = trained
    config = tiny_config()
    decoded = decode(model, planted.sources, config)
    original = TrainRows.build(planted.sources, RowSource.ORIGINAL,
                               np.arange(1, len(planted.sources) + 1))
    patterns = TrainRows.build(Sequences.from_lists(PLANTED), RowSource.PATTERN)
    out = assemble(original, patterns, decoded, config)
    assert out.stats["regenerated"] > 0
    # the regenerator was trained to extract exactly these patterns
    assert planted_recall(out.rows, PLANTED) >= 2 / 3  # contiguous


def test_chunked_dedup_equals_the_padded_grid(monkeypatch) -> None:
    # first_unique hashes rows in chunks and compares candidates item by item;
    # it must keep exactly the rows the one-grid np.unique(axis=0) keeps, also
    # when every row collides (all hashes forced equal) and with tiny chunks.
    import models.regenerated as regenerated

    rng = np.random.default_rng(3)
    cases = [Sequences.from_lists([rng.integers(0, 4, size=int(rng.integers(0, 5))).tolist()
                                   for _ in range(int(rng.integers(1, 60)))]) for _ in range(60)]
    for seqs in cases:
        assert np.array_equal(first_unique(seqs), regenerated._first_unique_exact(seqs))
    monkeypatch.setattr(regenerated, "_DEDUP_CHUNK", 3)
    for seqs in cases:
        assert np.array_equal(first_unique(seqs), regenerated._first_unique_exact(seqs))
    monkeypatch.setattr(regenerated, "_row_hashes",
                        lambda seqs, chunk_items=None: np.zeros(len(seqs), dtype=np.uint64))
    for seqs in cases:
        assert np.array_equal(first_unique(seqs), regenerated._first_unique_exact(seqs))


def test_order_source_drops_decodes_that_reverse_their_source():
    original, patterns = _inputs()
    kept = assemble(original, patterns, _decoded(), RegeneratorConfig.parity())
    ordered = assemble(original, patterns, _decoded(), RegeneratorConfig.parity(order="source"))
    # [8, 0, 7] reverses its source [7, 8]; [2, 7, 3] skips the 7 its source lacks
    assert kept.stats["decodes_out_of_source_order"] == ordered.stats["decodes_out_of_source_order"] == 1
    assert _regenerated(kept.rows) == [[1, 2], [2, 7, 3], [8, 0, 7]]
    assert _regenerated(ordered.rows) == [[1, 2], [2, 7, 3]]
    assert ordered.rows.user[ordered.rows.source == RowSource.REGENERATED].tolist() == [1, 1]
    assert (ordered.stats["decoded"], ordered.stats["order"]) == (6, "source")
    assert ordered.stats["rows_per_memory"] == {0: 1, 1: 1}


def _subsequence(row: list[int], source: list[int]) -> bool:
    it = iter(source)
    return all(x in it for x in row if x in source)


def test_in_source_order_matches_a_plain_subsequence_test():
    rng = np.random.default_rng(7)
    sources = [rng.integers(1, 9, size=rng.integers(1, 8)).tolist() for _ in range(40)]  # repeats included
    rows = [rng.integers(0, 11, size=rng.integers(0, 6)).tolist() for _ in range(600)]
    which = rng.integers(0, len(sources), size=len(rows))
    got = in_source_order(Sequences.from_lists(rows), Sequences.from_lists(sources), which)
    want = [_subsequence(r, sources[w]) for r, w in zip(rows, which, strict=True)]
    assert got.tolist() == want
    assert 50 < sum(want) < 550  # both outcomes are exercised
