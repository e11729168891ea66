"""Training data of the regenerator: checks, token rows and batches of
(sequence, pattern) pairs (spec §4.2)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from models.data.sequences import Sequences
from models.regenerator.model import RegeneratorInputError


def check_pairs(src: Sequences, tgt: Sequences, num_items: int, max_src_len: int) -> None:
    """Raise RegeneratorInputError unless every pair is usable for training."""
    if len(src) != len(tgt):
        raise RegeneratorInputError(f"{len(src)} sources but {len(tgt)} targets")
    if len(src) == 0:
        raise RegeneratorInputError("no (sequence, pattern) pairs to train on")
    for name, seqs in (("source", src), ("target", tgt)):
        lengths = seqs.lengths
        if lengths.min() < 1:
            raise RegeneratorInputError(f"{name} row {int(np.argmin(lengths))} is empty")
        if lengths.max() + 2 > max_src_len:
            raise RegeneratorInputError(
                f"{name} row {int(np.argmax(lengths))} has {int(lengths.max())} items; "
                f"at most max_src_len - 2 = {max_src_len - 2} fit the position table")
        bad = (seqs.items < 1) | (seqs.items > num_items)
        if bad.any():
            raise RegeneratorInputError(
                f"{name} item id {int(seqs.items[bad][0])} is outside 1..{num_items}")
    # The restrictive softmax only covers source tokens: a target item missing
    # from its source would have zero probability (infinite loss).
    key = np.int64(num_items + 1)
    src_keys = np.repeat(np.arange(len(src)), src.lengths) * key + src.items
    tgt_keys = np.repeat(np.arange(len(tgt)), tgt.lengths) * key + tgt.items
    missing = ~np.isin(tgt_keys, src_keys)
    if missing.any():
        row = int(tgt_keys[missing][0] // key)
        raise RegeneratorInputError(f"pair {row}: target item {int(tgt.items[missing][0])} "
                                    "does not occur in its source sequence")


def wrap_tokens(seqs: Sequences, sos: int, eos: int) -> tuple[np.ndarray, np.ndarray]:
    """[SOS] + row + [EOS], right-padded with 0 -> ((n, max_len + 2) int64, lengths)."""
    lengths = seqs.lengths
    width = int(lengths.max(initial=0))
    out = np.zeros((len(seqs), width + 2), dtype=np.int64)
    out[:, 0] = sos
    out[:, 1 : width + 1] = seqs.pad(length=width)
    out[np.arange(len(seqs)), lengths + 1] = eos
    return out, lengths


class PairBatches:
    """The training batches of (sequence, pattern) pairs, as token tensors.

    An epoch shuffles the pairs; with ``share_sources`` it then orders them
    by a shuffled rank of their source, so the pairs of one source are
    adjacent and mostly land in the same batch (a source is encoded once per
    batch that holds it). Every batch has ``batch_size`` pairs (the last one
    fewer). Inside a batch, rows are sorted by source length, which changes
    no loss term but lets attention pad per group of similar rows.
    """

    def __init__(self, src: Sequences, tgt: Sequences, sos: int, eos: int, batch_size: int,
                 share_sources: bool, device: torch.device) -> None:
        tgt_tok, self.tgt_len = wrap_tokens(tgt, sos, eos)
        self.src_len = src.lengths
        self.batch_size, self.share, self.device = batch_size, share_sources, device
        self.n = len(src)
        if share_sources:  # identical rows are one source, whichever user they came from
            from models.regenerated import unique_rows

            # Distinct rows by chunked hashing, then only those padded; ordered
            # as np.unique(axis=0) of every padded pair row orders them
            # (lexicographic), without building that (pairs x width) grid.
            first, inverse = unique_rows(src)
            uniq, _ = wrap_tokens(src.take(first), sos, eos)
            lex = np.lexsort(uniq.T[::-1])
            rank = np.empty(len(lex), dtype=np.int64)
            rank[lex] = np.arange(len(lex))
            self.source_of = rank[inverse]
            self.uniq_len = self.src_len[first][lex]
            src_tok = uniq[lex]
        else:
            src_tok, _ = wrap_tokens(src, sos, eos)
            self.source_of = np.arange(self.n)
            self.uniq_len = self.src_len
        self.uniq_tok = torch.from_numpy(src_tok).to(device)
        self.tgt_tok = torch.from_numpy(tgt_tok).to(device)

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def epoch(self, rng: np.random.Generator):
        """Yield (src, tgt, pair_src or None) for every batch of one epoch."""
        for rows in self.epoch_rows(rng):
            yield self.batch(rows)

    def epoch_rows(self, rng: np.random.Generator):
        """The pair rows of every batch of one epoch, each sorted by source length
        (the row order :meth:`batch` uses; data-parallel ranks cut it into shards)."""
        order = rng.permutation(self.n)
        if self.share:
            rank = rng.permutation(len(self.uniq_len))
            order = order[np.argsort(rank[self.source_of[order]], kind="stable")]
        for i in range(len(self)):
            rows = order[i * self.batch_size : (i + 1) * self.batch_size]
            yield rows[np.argsort(self.src_len[rows], kind="stable")]

    def batch(self, rows: np.ndarray) -> tuple[Tensor, Tensor, Tensor | None]:
        rows = rows[np.argsort(self.src_len[rows], kind="stable")]
        t_width = int(self.tgt_len[rows].max()) + 2
        tgt = self.tgt_tok[torch.from_numpy(rows).to(self.device), :t_width]
        if not self.share:
            s_width = int(self.src_len[rows].max()) + 2
            return self.uniq_tok[torch.from_numpy(rows).to(self.device), :s_width], tgt, None
        # Pairs are sorted by source length, so the distinct sources (in order
        # of first appearance) come sorted by length too.
        sources, first, pair_src = np.unique(self.source_of[rows], return_index=True, return_inverse=True)
        by_first = np.argsort(first, kind="stable")
        sources = sources[by_first]
        pair_src = np.argsort(by_first)[pair_src.reshape(-1)]
        s_width = int(self.uniq_len[sources].max()) + 2
        src = self.uniq_tok[torch.from_numpy(sources).to(self.device), :s_width]
        return src, tgt, torch.from_numpy(pair_src).to(self.device)
