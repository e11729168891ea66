"""Assembly of the regenerated training data (spec §5.3-5.4; quirks Q1, Q11-Q13).

Post-processing of the raw decodes, per the config flags:

1. strip the last decoded token unconditionally (``drop_last_token``, Q11:
   a decode that hit the length cap loses a real item) or only a final EOS;
2. global de-duplication of identical sequences across all users and all K
   memories (first occurrence kept, in user-major order);
3. sequences with fewer than 2 tokens are dropped.

Pad ids emitted under ``emit_pad`` (Q12) are kept where they were emitted:
such a row has a hole, as in the reference's file; ``stats`` counts them.
Rows carry an explicit source column instead of magic user ids (Q13): the
regenerated rows keep the id of the user they were decoded from.

The final rows are ``original + patterns (+ original again when
original_rows == "twice", Q1) + regenerated``; order is irrelevant to
training (the loader shuffles).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from models.data.sequences import RowSource, Sequences, TrainRows
from models.decoding import Decoded
from models.regenerator import RegeneratorConfig


@dataclass(frozen=True)
class RegeneratedData:
    rows: TrainRows  # ORIGINAL, PATTERN and REGENERATED rows
    stats: dict


def _require_source(rows: TrainRows, source: RowSource, what: str) -> None:
    bad = rows.source != int(source)
    if bad.any():
        raise ValueError(f"{what} row {int(np.argmax(bad))} has source "
                         f"{RowSource(int(rows.source[bad][0])).label}, expected {source.label}")


def _ends_with_eos(decoded: Decoded) -> np.ndarray:
    raw = decoded.seqs
    lengths = raw.lengths
    if len(raw.items) == 0:
        return np.zeros(len(raw), dtype=bool)
    return (lengths > 0) & (raw.items[np.maximum(raw.offsets[1:] - 1, 0)] == decoded.eos)


def strip_decodes(decoded: Decoded, drop_last_token: bool) -> Sequences:
    """Raw decodes -> regenerated sequences (step 1 above)."""
    lengths = decoded.seqs.lengths
    keep = np.maximum(lengths - 1, 0) if drop_last_token else lengths - _ends_with_eos(decoded)
    return decoded.seqs.slice_rows(np.zeros(len(lengths), dtype=np.int64), keep)


def first_unique(seqs: Sequences) -> np.ndarray:
    """Sorted indices of the first occurrence of every distinct row."""
    if len(seqs) == 0:
        return np.zeros(0, dtype=np.int64)
    # Pad with -1 (never an id) and append the length so [a, 0] and [a] differ.
    width = int(seqs.lengths.max(initial=0))
    grid = np.full((len(seqs), width + 1), -1, dtype=np.int64)
    grid[:, 1:] = np.where(np.arange(width)[None, :] < seqs.lengths[:, None],
                           seqs.pad(length=width), -1)
    grid[:, 0] = seqs.lengths
    _, first = np.unique(grid, axis=0, return_index=True)
    return np.sort(first)


def _generative_share(seqs: Sequences, sources: Sequences, source_row: np.ndarray, vocab: int) -> float:
    """Fraction of regenerated items (pads excluded) absent from the source they came from."""
    row_of = np.repeat(np.arange(len(seqs)), seqs.lengths)
    items = seqs.items
    real = items != 0
    if not real.any():
        return 0.0
    keys = source_row[row_of[real]] * vocab + items[real]
    src_keys = np.repeat(np.arange(len(sources)), sources.lengths) * vocab + sources.items
    return float(1.0 - np.isin(keys, src_keys).mean())


def assemble(original: TrainRows, patterns: TrainRows, decoded: Decoded,
             config: RegeneratorConfig) -> RegeneratedData:
    """The regenerated training rows and statistics (spec §5.3-5.4)."""
    _require_source(original, RowSource.ORIGINAL, "original")
    _require_source(patterns, RowSource.PATTERN, "pattern")
    stripped = strip_decodes(decoded, config.drop_last_token)
    unique = first_unique(stripped)
    kept = unique[stripped.lengths[unique] >= 2]
    seqs = stripped.take(kept)
    regen = TrainRows.build(seqs, RowSource.REGENERATED, decoded.user[kept])
    rows = original.concat(patterns)
    if config.original_rows == "twice":
        rows = rows.concat(original)
    rows = rows.concat(regen)

    ended_eos = _ends_with_eos(decoded)
    row_of = np.repeat(np.arange(len(seqs)), seqs.lengths)
    lengths, counts = np.unique(seqs.lengths, return_counts=True)
    memories, per_memory = np.unique(decoded.memory[kept], return_counts=True)
    stats = {
        "rows": rows.counts(),
        "original_copies": 2 if config.original_rows == "twice" else 1,
        "decoded": int(len(decoded)),
        "decodes_ended_with_eos": int(ended_eos.sum()),
        "decodes_hit_length_cap": int((~ended_eos).sum()),
        "duplicates_removed": int(len(stripped) - len(unique)),
        "dropped_short": int(len(unique) - len(kept)),
        "regenerated": int(len(kept)),
        "length_histogram": {int(k): int(v) for k, v in zip(lengths, counts, strict=True)},
        "mean_length": float(seqs.lengths.mean()) if len(kept) else 0.0,
        "rows_with_pad": int(len(np.unique(row_of[seqs.items == 0]))),
        "generative_share": _generative_share(seqs, decoded.sources, decoded.source_index[kept],
                                              decoded.num_items + 3),
        "memories_used": int(len(memories)),
        "rows_per_memory": {int(k): int(v) for k, v in zip(memories, per_memory, strict=True)},
    }
    return RegeneratedData(rows, stats)


def planted_recall(rows: TrainRows, planted: Iterable[Sequence[int]], window: int | None = None) -> float:
    """Fraction of ``planted`` patterns (item-id tuples) found in the REGENERATED rows.

    A pattern ``p`` is found when some regenerated row has positions
    ``j_1 < ... < j_k`` with ``row[j_r] = p_r`` and ``j_k - j_1 < w``, where
    ``w = window`` or, by default, ``len(p)`` (i.e. contiguous). Meant for
    synthetic data with a handful of planted patterns: a plain scan, indexed
    by the pattern's first item.
    """
    planted = [tuple(int(x) for x in p) for p in planted]
    if not planted:
        raise ValueError("no planted patterns given")
    if any(len(p) < 1 for p in planted):
        raise ValueError("planted patterns must not be empty")
    regen = rows.seqs.take(np.flatnonzero(rows.source == int(RowSource.REGENERATED)))
    starts: dict[int, list[tuple[int, int]]] = {}
    first_items = {p[0] for p in planted}
    for r, seq in enumerate(regen):
        for j, item in enumerate(seq.tolist()):
            if item in first_items:
                starts.setdefault(item, []).append((r, j))
    found = 0
    for p in planted:
        w = len(p) if window is None else int(window)
        for r, j in starts.get(p[0], ()):
            if _occurs_from(regen[r].tolist(), j, p, w):
                found += 1
                break
    return found / len(planted)


def _occurs_from(seq: list[int], j: int, p: tuple[int, ...], w: int) -> bool:
    """Greedy: p[1:] in order inside seq[j+1 : j+w] (earliest match is optimal)."""
    pos = j
    for item in p[1:]:
        try:
            pos = seq.index(item, pos + 1, j + w)
        except ValueError:
            return False
    return True
