"""Rule-based pattern mining and (sequence, pattern) pre-training pairs (spec §2).

Mining reproduces Seq2Pat with ``max_span = alpha`` and ``min_frequency =
beta``: a pattern is an ordered item list of length >= 2 that occurs as a
subsequence ``j_1 < ... < j_k`` with ``j_k - j_1 <= alpha - 1`` (gaps
allowed) in at least ``beta`` distinct sequences; every frequent pattern is
returned, not only closed ones.

Both stages run level-wise over occurrence arrays instead of enumerating
every window subset at once: support is anti-monotone along prefixes (an
occurrence of ``p`` restricted to its first k-1 items is an occurrence of
the prefix inside the same span), so only occurrences of frequent prefixes
are ever extended. Memory then follows the number of frequent patterns, not
``2 ** (alpha - 1)`` candidates per position.

A pattern budget (``max_patterns``) raises the support threshold above
``beta`` just enough that at most that many patterns are kept: the result
is exactly "all patterns with support >= beta*", beta* the smallest
threshold >= beta that fits the budget, so it stays closed under
sub-patterns and is reproducible with ``beta = beta*``. Because support
only falls along a prefix, the threshold found after each level is a
lower bound of beta*, and prefixes below it are never extended: dense logs
do not pay for the patterns they will drop.

Pairs (spec §2.3, quirks Q25/Q26/Q33) walk a trie of the patterns over each
source with per-item sorted position lists, so a pattern is only looked at
for sources that contain its prefix, never in a per-user scan of all
patterns.

One concern per module, all re-exported here:

* :mod:`~models.patterns.mining`: :func:`mine_patterns`;
* :mod:`~models.patterns.pairs`: :func:`build_pairs` (``MATCH_MODES``);
* :mod:`~models.patterns.results`: :class:`Patterns`, :class:`Pairs`,
  :func:`pattern_budget` (``DEFAULT_MAX_PATTERN_RATIO``), :func:`pattern_rows`
  and :func:`describe`;
* :mod:`~models.patterns.arrays`: the flat-array helpers both stages share.

Their knobs (``alpha``, ``beta``, ``max_pattern_ratio``, ``max_pairs``,
``pair_match``) are fields of :class:`models.config.RegenerationConfig`.
"""

from __future__ import annotations

from models.patterns.mining import mine_patterns
from models.patterns.pairs import MATCH_MODES, build_pairs
from models.patterns.results import (
    DEFAULT_MAX_PATTERN_RATIO,
    Pairs,
    Patterns,
    describe,
    pattern_budget,
    pattern_rows,
)

__all__ = [
    "DEFAULT_MAX_PATTERN_RATIO",
    "MATCH_MODES",
    "Pairs",
    "Patterns",
    "build_pairs",
    "describe",
    "mine_patterns",
    "pattern_budget",
    "pattern_rows",
]
