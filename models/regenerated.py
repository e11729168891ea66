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


_DEDUP_CHUNK = 1 << 20  # items hashed per chunk


def _row_hashes(seqs: Sequences, chunk_items: int | None = None) -> np.ndarray:
    """(n,) uint64 hash of every row (its length and items), computed over
    chunks of whole rows of about ``chunk_items`` items."""
    chunk_items = chunk_items or _DEDUP_CHUNK
    lengths = seqs.lengths
    width = int(lengths.max(initial=0))
    rng = np.random.default_rng(0x5EED)
    mult = rng.integers(1, 2**63, size=width, dtype=np.uint64) | np.uint64(1)  # odd per-position multipliers
    out = lengths.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    offsets = seqs.offsets
    bounds = np.searchsorted(offsets, np.arange(0, int(offsets[-1]) + chunk_items, chunk_items))
    bounds = np.unique(np.concatenate([[0], np.minimum(bounds, len(seqs)), [len(seqs)]]))
    with np.errstate(over="ignore"):
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            lo, hi = int(offsets[a]), int(offsets[b])
            if hi == lo:
                continue
            row = np.repeat(np.arange(a, b), lengths[a:b])
            pos = np.arange(lo, hi) - offsets[row]
            mixed = (seqs.items[lo:hi].astype(np.uint64) + np.uint64(1)) * mult[pos]
            mixed ^= mixed >> np.uint64(29)
            nonempty = np.flatnonzero(lengths[a:b] > 0)
            out[a + nonempty] += np.add.reduceat(mixed, (offsets[a:b] - lo)[nonempty])
    return out


def _first_unique_exact(seqs: Sequences) -> np.ndarray:
    """Sorted indices of the first occurrence of every distinct row (one grid)."""
    # Pad with -1 (never an id) and append the length so [a, 0] and [a] differ.
    width = int(seqs.lengths.max(initial=0))
    grid = np.full((len(seqs), width + 1), -1, dtype=np.int64)
    grid[:, 1:] = np.where(np.arange(width)[None, :] < seqs.lengths[:, None],
                           seqs.pad(length=width), -1)
    grid[:, 0] = seqs.lengths
    _, first = np.unique(grid, axis=0, return_index=True)
    return np.sort(first)


def _same_rows(seqs: Sequences, a: np.ndarray, b: np.ndarray, chunk_items: int | None = None) -> np.ndarray:
    """(len(a),) bool: row a[i] equals row b[i], compared in chunks."""
    chunk_items = chunk_items or _DEDUP_CHUNK
    lengths = seqs.lengths
    same = lengths[a] == lengths[b]
    idx = np.flatnonzero(same)
    step = max(1, chunk_items // max(1, int(lengths.max(initial=1))))
    for s in range(0, len(idx), step):
        part = idx[s : s + step]
        n = lengths[a[part]]
        row = np.repeat(np.arange(len(part)), n)
        pos = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
        diff = seqs.items[seqs.offsets[a[part]][row] + pos] != seqs.items[seqs.offsets[b[part]][row] + pos]
        same[part[np.unique(row[diff])]] = False
    return same


def unique_rows(seqs: Sequences) -> tuple[np.ndarray, np.ndarray]:
    """(first, inverse): the sorted indices of the first occurrence of every
    distinct row (:func:`first_unique`) and, per row, the index into ``first``
    of its distinct row. Hashed in chunks like :func:`first_unique`."""
    first = first_unique(seqs)
    if len(seqs) == 0:
        return first, np.zeros(0, dtype=np.int64)
    h = _row_hashes(seqs)
    _, h_first, h_inverse = np.unique(h, return_index=True, return_inverse=True)
    if len(h_first) == len(first):  # no collision: hash classes are the row classes
        return first, np.searchsorted(first, h_first[h_inverse.reshape(-1)])
    # A collision (about never): the exact padded grid for the classes.
    width = int(seqs.lengths.max(initial=0))
    grid = np.full((len(seqs), width + 1), -1, dtype=np.int64)
    grid[:, 1:] = np.where(np.arange(width)[None, :] < seqs.lengths[:, None], seqs.pad(length=width), -1)
    grid[:, 0] = seqs.lengths
    _, g_first, g_inverse = np.unique(grid, axis=0, return_index=True, return_inverse=True)
    return first, np.searchsorted(first, g_first[g_inverse.reshape(-1)])


def first_unique(seqs: Sequences) -> np.ndarray:
    """Sorted indices of the first occurrence of every distinct row.

    Rows are hashed in chunks (no whole-dataset padded grid); every row whose
    hash was seen before is compared item by item with that hash's first row,
    and only the rows of a hash shared by different rows (a collision, about
    never) go through the exact padded-grid de-duplication. The result is
    exactly the padded grid's on every input."""
    if len(seqs) == 0:
        return np.zeros(0, dtype=np.int64)
    h = _row_hashes(seqs)
    _, first, inverse = np.unique(h, return_index=True, return_inverse=True)
    rep = first[inverse.reshape(-1)]  # the first row with the same hash
    later = np.flatnonzero(rep != np.arange(len(seqs)))
    equal = _same_rows(seqs, later, rep[later])
    if equal.all():
        return np.sort(first)
    # Collisions: settle every row of the colliding hashes exactly.
    bad_hash = np.unique(inverse.reshape(-1)[later[~equal]])
    involved = np.flatnonzero(np.isin(inverse.reshape(-1), bad_hash))
    keep = np.ones(len(seqs), dtype=bool)
    keep[later] = False  # exact duplicates of an earlier row (and the colliding rows, redone below)
    keep[involved] = False
    keep[involved[_first_unique_exact(seqs.take(involved))]] = True
    return np.flatnonzero(keep)


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


def in_source_order(seqs: Sequences, sources: Sequences, source_row: np.ndarray) -> np.ndarray:
    """(len(seqs),) bool: row i's items that occur in ``sources[source_row[i]]``
    occur there in the same order, i.e. they form a subsequence of it (items
    absent from the source, such as generated ones or pads, are skipped).

    A greedy match, vectorised over rows: step j moves each row's pointer to
    the first occurrence of its j-th item after the previous match (the
    earliest match is optimal for subsequence tests)."""
    n = len(seqs)
    ok = np.ones(n, dtype=bool)
    if n == 0 or len(sources.items) == 0:
        return ok
    source_row = np.asarray(source_row, dtype=np.int64)
    width = int(sources.lengths.max()) + 1
    vocab = int(max(seqs.items.max(initial=0), sources.items.max(initial=0))) + 1
    src_of = np.repeat(np.arange(len(sources), dtype=np.int64), sources.lengths)
    pos = np.arange(len(sources.items), dtype=np.int64) - np.repeat(sources.offsets[:-1], sources.lengths)
    keys = src_of * vocab + sources.items.astype(np.int64)  # (source, item)
    located = np.sort(keys * width + pos)  # every occurrence, by (source, item, position)
    pointer = np.full(n, -1, dtype=np.int64)
    lengths = seqs.lengths
    for j in range(int(lengths.max(initial=0))):
        rows = np.flatnonzero(ok & (lengths > j))
        if len(rows) == 0:
            break
        key = source_row[rows] * vocab + seqs.items[seqs.offsets[rows] + j].astype(np.int64)
        first = np.searchsorted(located, key * width)  # the item's first occurrence in the source
        present = (first < len(located)) & (located[np.minimum(first, len(located) - 1)] // width == key)
        after = np.searchsorted(located, key * width + pointer[rows] + 1)
        found = (after < len(located)) & (located[np.minimum(after, len(located) - 1)] // width == key)
        ok[rows[present & ~found]] = False  # in the source, but only before the previous match
        moved = rows[found]
        pointer[moved] = located[after[found]] % width
    return ok


def assemble(original: TrainRows, patterns: TrainRows, decoded: Decoded,
             config: RegeneratorConfig) -> RegeneratedData:
    """The regenerated training rows and statistics (spec §5.3-5.4)."""
    _require_source(original, RowSource.ORIGINAL, "original")
    _require_source(patterns, RowSource.PATTERN, "pattern")
    stripped = strip_decodes(decoded, config.drop_last_token)
    ordered = in_source_order(stripped, decoded.sources, decoded.source_index)
    out_of_order = int((~ordered & (stripped.lengths >= 2)).sum())
    chosen = decoded
    if config.order == "source":
        keep = np.flatnonzero(ordered)
        chosen, stripped = decoded.take(keep), stripped.take(keep)
    unique = first_unique(stripped)
    kept = unique[stripped.lengths[unique] >= 2]
    seqs = stripped.take(kept)
    regen = TrainRows.build(seqs, RowSource.REGENERATED, chosen.user[kept])
    rows = original.concat(patterns)
    if config.original_rows == "twice":
        rows = rows.concat(original)
    rows = rows.concat(regen)

    ended_eos = _ends_with_eos(decoded)
    row_of = np.repeat(np.arange(len(seqs)), seqs.lengths)
    lengths, counts = np.unique(seqs.lengths, return_counts=True)
    memories, per_memory = np.unique(chosen.memory[kept], return_counts=True)
    stats = {
        "rows": rows.counts(),
        "original_copies": 2 if config.original_rows == "twice" else 1,
        "decoded": int(len(decoded)),
        "decodes_ended_with_eos": int(ended_eos.sum()),
        "decodes_hit_length_cap": int((~ended_eos).sum()),
        "order": config.order,
        "copy_order": config.copy_order,
        "decodes_out_of_source_order": out_of_order,
        "duplicates_removed": int(len(stripped) - len(unique)),
        "dropped_short": int(len(unique) - len(kept)),
        "regenerated": int(len(kept)),
        "length_histogram": {int(k): int(v) for k, v in zip(lengths, counts, strict=True)},
        "mean_length": float(seqs.lengths.mean()) if len(kept) else 0.0,
        "rows_with_pad": int(len(np.unique(row_of[seqs.items == 0]))),
        "generative_share": _generative_share(seqs, decoded.sources, chosen.source_index[kept],
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
