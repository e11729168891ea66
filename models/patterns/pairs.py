"""(sequence, pattern) pre-training pairs (spec §2.3, quirks Q25/Q26/Q33):
a trie of the patterns walked over each source, and seeded sampling of at
most ``max_per_source`` matches per source (:func:`build_pairs`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.data.sequences import Sequences
from models.patterns.arrays import _check_packable, _check_sequences, _chunks, _positions
from models.patterns.results import Pairs, Patterns
from models.progress import Progress, ProgressEvent, no_progress

MATCH_MODES = ("anywhere", "window")


@dataclass(frozen=True)
class _Trie:
    """Prefix tree of the patterns, one array set per depth (depth d = prefixes of d items)."""

    parent: list[np.ndarray]  # depth d: parent node (row at depth d-1), 0 at depth 1
    item: list[np.ndarray]  # depth d: the item this node adds
    pattern: list[np.ndarray]  # depth d: pattern row ending at this node, -1 if none
    first_child: list[np.ndarray]  # depth d: first child row at depth d+1
    n_children: list[np.ndarray]  # depth d: number of children at depth d+1
    node_of_item: np.ndarray  # (radix,) depth-1 node of each item, -1 if no pattern starts with it
    n_patterns: int
    # depth d: sorted edge keys parent * radix + item (row i of depth d is key i),
    # so the child of (node, item) is found by binary search
    key: list[np.ndarray]


def _build_trie(patterns: Sequences, radix: int) -> _Trie:
    lengths = patterns.lengths
    if len(lengths) and int(lengths.min()) < 1:
        raise ValueError("patterns must not be empty")
    _check_packable(max(len(patterns), 1), radix, "trie keys")
    depth = int(lengths.max(initial=0))
    parent, item, pattern, keys = [], [], [], []
    node_of = np.zeros(len(patterns), dtype=np.int64)  # current node of each pattern
    for d in range(depth):
        alive = np.flatnonzero(lengths > d)
        key = node_of[alive] * radix + patterns.items[patterns.offsets[alive] + d]
        uniq, inverse = np.unique(key, return_inverse=True)
        node_of[alive] = inverse
        keys.append(uniq)
        parent.append(uniq // radix)
        item.append(uniq % radix)
        ends = alive[lengths[alive] == d + 1]
        term = np.full(len(uniq), -1, dtype=np.int64)
        end_nodes = node_of[ends]
        if len(np.unique(end_nodes)) != len(end_nodes):
            raise ValueError("patterns contain duplicate item lists; pairs need unique patterns")
        term[end_nodes] = ends
        pattern.append(term)
    first_child, n_children = [], []
    for d in range(depth):
        size = len(item[d])
        if d + 1 < depth:
            # children are sorted by parent, so each parent's children are contiguous
            first = np.searchsorted(parent[d + 1], np.arange(size), side="left")
            stop = np.searchsorted(parent[d + 1], np.arange(size), side="right")
        else:
            first = stop = np.zeros(size, dtype=np.int64)
        first_child.append(first.astype(np.int64))
        n_children.append((stop - first).astype(np.int64))
    node_of_item = np.full(radix, -1, dtype=np.int64)
    if depth:
        node_of_item[item[0]] = np.arange(len(item[0]))
    return _Trie(parent, item, pattern, first_child, n_children, node_of_item, len(patterns), keys)


def _match_chunk(
    items: np.ndarray,
    lo: int,
    hi: int,
    row_of: np.ndarray,
    end_of: np.ndarray,
    trie: _Trie,
    window: bool,
    alpha: int,
    expand: str = "cheaper",
) -> tuple[np.ndarray, np.ndarray]:
    """(source row, pattern row) of every pattern contained in the sources whose
    items are the flat positions ``lo:hi``: as a subsequence anywhere, or with
    all items inside ``alpha`` consecutive positions.

    A state is a matched trie prefix (node, start, last position). Its next
    states are the children whose item occurs after ``last`` and before the
    limit (the source's end, or ``start + alpha`` for a window), each at its
    first such occurrence. They are found from whichever side is smaller:
    the node's children (next occurrence of each child's item) or the
    positions left before the limit (the first occurrence of each item there,
    looked up as an edge of the node). Both give the same states, so the work
    per state is at most min(#children, #positions left): bounded by the
    sequence length, not by the number of patterns (issue #15).
    ``expand="children"`` always takes the children side: the walk before
    issue #15, kept as the baseline of tests and ``benchmarks/pairs_growth.py``.
    """
    span = hi - lo
    radix = len(trie.node_of_item)
    pos = np.arange(lo, hi, dtype=np.int64)
    chunk_items = items[lo:hi]
    occurrences = np.sort(chunk_items * span + (pos - lo))  # by item, then position
    # Previous position of the same item in the chunk (-1 if none): position p
    # is the first occurrence of its item after ``last`` iff prev[p] <= last
    # (an occurrence in an earlier source is before the state's source).
    occ_pos = occurrences % span
    same = occurrences[1:] // span == occurrences[:-1] // span
    prev = np.full(span, -1, dtype=np.int64)
    prev[occ_pos[1:][same]] = occ_pos[:-1][same] + lo
    # Depth 1: greedy leftmost matching makes the first occurrence of an item
    # the only state needed for "anywhere"; a window match needs every start.
    if not window:
        _, first = np.unique(row_of[lo:hi] * radix + chunk_items, return_index=True)
        pos = pos[first]
    node = trie.node_of_item[items[pos]]
    keep = node >= 0
    node, start, last = node[keep], pos[keep], pos[keep]
    found_src, found_pat = [], []
    for d in range(len(trie.item)):
        term = trie.pattern[d][node]
        hit = term >= 0
        found_src.append(row_of[last[hit]])
        found_pat.append(term[hit])
        if d + 1 == len(trie.item):
            break
        limit = end_of[last]
        if window:
            limit = np.minimum(limit, start + alpha)
        counts = trie.n_children[d][node]
        room = limit - last - 1  # positions left after the state, before its limit
        by_child = counts <= room if expand == "cheaper" else np.ones(len(node), dtype=bool)
        a = _expand_children(occurrences, span, lo, trie, d, node, start, last, limit, counts, by_child)
        b = _expand_positions(items, prev, lo, radix, trie.key[d + 1], node, start, last, room, ~by_child)
        node, start, last = (np.concatenate([x, y]) for x, y in zip(a, b, strict=True))
    # Sorted by (source, pattern); several window starts can match one pattern.
    packed = np.unique(np.concatenate(found_src) * trie.n_patterns + np.concatenate(found_pat))
    return packed // trie.n_patterns, packed % trie.n_patterns


def _expand_children(occurrences, span, lo, trie, d, node, start, last, limit, counts, sel):
    """Next states of the selected states through each trie child: the next
    occurrence of the child's item after ``last``, kept if before ``limit``."""
    node, start, last, limit, counts = node[sel], start[sel], last[sel], limit[sel], counts[sel]
    child = np.repeat(trie.first_child[d][node] - np.cumsum(counts) + counts, counts)
    child += np.arange(int(counts.sum()), dtype=np.int64)
    start, last, limit = np.repeat(start, counts), np.repeat(last, counts), np.repeat(limit, counts)
    want = trie.item[d + 1][child] * span - lo  # key of (item, position lo)
    slot = np.searchsorted(occurrences, want + last + 1)
    nxt = occurrences[np.minimum(slot, span - 1)] - want  # flat position if same item
    ok = (slot < span) & (nxt < limit)
    return child[ok], start[ok], nxt[ok]


def _expand_positions(items, prev, lo, radix, keys, node, start, last, room, sel):
    """Next states of the selected states through each position left: the
    first occurrence of each item after ``last`` (before the limit), kept if
    (node, item) is a trie edge."""
    node, start, last, room = node[sel], start[sel], last[sel], room[sel]
    n = int(room.sum())
    node, start, last = np.repeat(node, room), np.repeat(start, room), np.repeat(last, room)
    nxt = last + 1 + np.arange(n, dtype=np.int64) - np.repeat(np.cumsum(room) - room, room)
    first = prev[nxt - lo] <= last
    node, start, nxt = node[first], start[first], nxt[first]
    want = node * radix + items[nxt]
    slot = np.searchsorted(keys, want)
    ok = keys[np.minimum(slot, len(keys) - 1)] == want
    return slot[ok], start[ok], nxt[ok]


def build_pairs(
    sources: Sequences,
    patterns: Patterns,
    max_per_source: int = 10,
    match: str = "anywhere",
    alpha: int = 5,
    seed: int = 2024,
    progress: Progress = no_progress,
    *,
    chunk_positions: int = 5_000,
) -> Pairs:
    """Pair each source with a uniformly random subset of size
    ``min(max_per_source, #matches)`` of the patterns it contains.

    ``match="anywhere"`` is the reference's plain subsequence test (Q26);
    ``"window"`` re-applies the mining span ``alpha``. The subset is drawn
    with a seeded numpy Generator (the reference never seeds, Q25).

    Sources are matched and sampled in chunks of about ``chunk_positions``
    items; the choice does not depend on the chunk size (one chunk draws every
    match's key at once), and small chunks keep the work per item constant
    (Beauty: 3 s at 5,000 versus 12 s at 200,000 on the 2-core machine).
    """
    if match not in MATCH_MODES:
        raise ValueError(f"match must be one of {MATCH_MODES}, got {match!r}")
    if int(max_per_source) != max_per_source or max_per_source < 1:
        raise ValueError(f"max_per_source must be an integer >= 1, got {max_per_source}")
    if int(alpha) != alpha or alpha < 1:
        raise ValueError(f"alpha must be an integer >= 1, got {alpha}")
    _check_sequences(sources, "pair sources")
    _check_sequences(patterns.seqs, "patterns")
    items = sources.items
    radix = max(int(items.max(initial=0)), int(patterns.seqs.items.max(initial=0))) + 1
    chunks = _chunks(sources, chunk_positions)
    _check_packable(radix, max((hi - lo for lo, hi in chunks), default=1), "position keys")
    _check_packable(max(len(sources), 1), radix, "source keys")
    _check_packable(max(len(sources), 1), max(len(patterns), 1), "pair keys")
    trie = _build_trie(patterns.seqs, radix)
    row_of, end_of = _positions(sources)
    matches = np.zeros(len(sources), dtype=np.int64)
    kept_src, kept_pat = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    # A random key per (source, pattern) match in canonical (source, pattern)
    # order; the smallest max_per_source keys of each source form a uniformly
    # random subset. Chunks hold whole sources and come in source order, so the
    # keys are drawn chunk by chunk from one Generator (the same doubles as one
    # draw over every match) and each chunk's matches are sampled, then
    # dropped: memory follows a chunk's matches, not the dataset's.
    rng = np.random.default_rng(seed)
    for c, (lo, hi) in enumerate(chunks):
        if trie.n_patterns and hi > lo:
            src, pat = _match_chunk(items, lo, hi, row_of, end_of, trie, match == "window", int(alpha))
            first, stop = int(row_of[lo]), int(row_of[hi - 1]) + 1  # the chunk's sources
            chosen, matches[first:stop] = _sample_per_source(
                src - first, stop - first, rng.random(len(src)), max_per_source
            )
            kept_src.append(src[chosen])
            kept_pat.append(pat[chosen])
        progress(ProgressEvent("pairs", c + 1, len(chunks), metrics={"sources": float(hi)}))
    return Pairs(np.concatenate(kept_src), np.concatenate(kept_pat), matches)


def _sample_per_source(
    src: np.ndarray, n_sources: int, noise: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Among matches sorted by source (``src`` in ``0..n_sources-1``), the sorted
    indices of the ``k`` smallest keys of each source, and the matches per source."""
    counts = np.bincount(src, minlength=n_sources).astype(np.int64)
    order = np.lexsort((noise, src))
    first_of_source = np.cumsum(counts) - counts
    rank = np.arange(len(src)) - first_of_source[src[order]]
    return np.sort(order[rank < k]), counts
