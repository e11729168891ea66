"""What mining and pairing return (:class:`Patterns`, :class:`Pairs`), the
adaptive pattern budget, the patterns' training rows and :func:`describe`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.data.sequences import RowSource, Sequences, TrainRows

# The adaptive default (issue 14): at most this many pattern rows per
# original training row. The paper's sparse sets stay below it at beta = 2
# (Beauty 1.82, Sports 0.62, Toys 1.02, Yelp 0.88), so their output is
# unchanged; MovieLens-100k would have 87 at beta = 2.
DEFAULT_MAX_PATTERN_RATIO = 2.0


@dataclass(frozen=True)
class Patterns:
    """Mined patterns sorted by decreasing support, ties in lexicographic item order."""

    seqs: Sequences  # row i = items of pattern i
    support: np.ndarray  # (P,) int64, distinct sequences containing pattern i
    min_support: int = 1  # the support threshold they were mined with (beta, or beta* under a budget)

    def __post_init__(self) -> None:
        if len(self.support) != len(self.seqs):
            raise ValueError(
                f"support has {len(self.support)} entries for {len(self.seqs)} patterns"
            )

    def __len__(self) -> int:
        return len(self.seqs)

    def length_counts(self) -> dict[int, int]:
        """Number of patterns per pattern length, e.g. ``{2: 28108, 3: 10210, ...}``."""
        lengths, counts = np.unique(self.seqs.lengths, return_counts=True)
        return {int(k): int(c) for k, c in zip(lengths, counts, strict=True)}


@dataclass(frozen=True)
class Pairs:
    """(source, pattern) pre-training pairs, sorted by source then pattern row."""

    source_index: np.ndarray  # (n_pairs,) int64 row of the sources
    pattern_index: np.ndarray  # (n_pairs,) int64 row of patterns.seqs
    matches: np.ndarray  # (n_sources,) int64 number of matching patterns before sampling

    def __len__(self) -> int:
        return len(self.source_index)

    def materialise(self, sources: Sequences, patterns: Patterns) -> tuple[Sequences, Sequences]:
        """The pairs as two aligned ragged arrays: (source sequences, target patterns)."""
        if len(sources) != len(self.matches):
            raise ValueError(f"pairs were built on {len(self.matches)} sources, got {len(sources)}")
        return sources.take(self.source_index), patterns.seqs.take(self.pattern_index)


def pattern_budget(original_rows: int, ratio: float = DEFAULT_MAX_PATTERN_RATIO) -> int:
    """Most pattern rows allowed next to ``original_rows`` original training rows."""
    if not ratio > 0:
        raise ValueError(f"max_pattern_ratio must be > 0, got {ratio}")
    return max(1, int(ratio * original_rows))


def pattern_rows(patterns: Patterns) -> TrainRows:
    """One PATTERN training row per pattern (input p[:-1], target p[1:]), user 0."""
    return TrainRows.build(patterns.seqs, RowSource.PATTERN)


def describe(patterns: Patterns, pairs: Pairs | None = None, max_per_source: int = 10) -> dict:
    """Summary statistics of a mining run (and of its pairs when given)."""
    out: dict = {
        "patterns": len(patterns),
        "patterns_per_length": {str(k): v for k, v in patterns.length_counts().items()},
        "max_support": int(patterns.support.max(initial=0)),
        "min_support": int(patterns.min_support),
    }
    if pairs is not None:
        n_sources = len(pairs.matches)
        out.update(
            pairs=len(pairs),
            sources=n_sources,
            mean_pairs_per_source=len(pairs) / n_sources if n_sources else 0.0,
            sources_without_pair=int((pairs.matches == 0).sum()),
            sources_at_cap=int((pairs.matches >= max_per_source).sum()),
            matches=int(pairs.matches.sum()),
        )
    return out
