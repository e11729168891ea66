"""What a regenerated training set is made of, and warnings when it is lopsided.

A regenerated dataset mixes three row sources: the original rows (one per
user), the mined pattern rows and the regenerated rows. On the paper's sparse
sets the mix is balanced (Beauty, profile ``fixed``: 24 % original, 43 %
pattern, 34 % regenerated). On a dense log with the paper's beta = 2 it is
not: MovieLens-100k had 87 pattern rows per original row, 98 % of the file,
and most rows held two items. :func:`composition` reports the ratios,
:func:`composition_warnings` turns a lopsided mix into warnings that name the
parameter to change. Torch-free: the API and the CLI use it too.
"""

from __future__ import annotations

from typing import Any

from models.data.sequences import RowSource, TrainRows

# A source holding more than this share of the rows dominates the dataset.
# Beauty's largest share (pattern rows, 43 %) stays well below it.
SOURCE_SHARE_LIMIT = 0.75
# A row of at most this many items is one next-item target: a fragment.
SHORT_ITEMS = 2
# Warn when more than this share of the rows are fragments. Beauty cannot reach
# it: its short pattern rows are 30 % of the file and its regenerated rows 34 %.
SHORT_SHARE_LIMIT = 0.75

_LABELS = tuple(s.label for s in RowSource)


def composition(rows: TrainRows, original_rows: int | None = None) -> dict[str, Any]:
    """Row counts, shares and ratios per source, and how many rows are fragments.

    ``original_rows`` is the number of users' training rows (the denominator
    of the ratios); by default the ORIGINAL rows in ``rows`` (which counts
    them twice under the parity profile's Q1).
    """
    counts = rows.counts()
    total = len(rows)
    base = int(original_rows) if original_rows is not None else counts["original"]
    lengths = rows.seqs.lengths
    short = lengths <= SHORT_ITEMS
    per_source = {s.label: rows.source == int(s) for s in RowSource}
    return {
        "rows": total,
        "counts": counts,
        "original_rows": base,
        "pattern_rows": counts["pattern"],
        "regenerated_rows": counts["regenerated"],
        "pattern_ratio": round(counts["pattern"] / base, 4) if base else None,
        "regenerated_ratio": round(counts["regenerated"] / base, 4) if base else None,
        "shares": {k: round(counts[k] / total, 4) if total else 0.0 for k in _LABELS},
        "mean_items": {
            k: round(float(lengths[m].mean()), 2) if m.any() else 0.0 for k, m in per_source.items()
        },
        "short_items": SHORT_ITEMS,
        "short_rows": int(short.sum()),
        "short_share": round(float(short.mean()), 4) if total else 0.0,
        "short_rows_by_source": {k: int(short[m].sum()) for k, m in per_source.items()},
    }


def composition_warnings(
    comp: dict[str, Any], beta_set: bool | None = None, patterns_only: bool = False
) -> list[dict[str, str]]:
    """``[{"code", "message", "parameter"}]`` for a lopsided mix (empty when balanced).

    ``beta_set`` says whether the user fixed beta (then beta is the knob for
    pattern rows) or left it adaptive (then max_pattern_ratio is); ``None``:
    not known, both are named. Under the ``patterns_only`` ablation the
    regenerated rows are the patterns, so the pattern knob is named for them.
    """
    total = comp["rows"]
    if not total:
        return []
    out: list[dict[str, str]] = []
    base = comp["original_rows"]
    pattern_knob = "beta" if beta_set else "max_pattern_ratio"
    if beta_set:
        fewer_patterns = "raise beta (or leave it unset: the adaptive default keeps pattern rows within max_pattern_ratio x the original rows)"
    elif beta_set is None:
        fewer_patterns = "lower max_pattern_ratio (or raise beta, if you set it)"
    else:
        fewer_patterns = "lower max_pattern_ratio"
    advice = {
        "pattern": (pattern_knob, fewer_patterns),
        "regenerated": ("k_memories", "lower k_memories (regenerated rows per user)"),
        "original": (
            "k_memories",
            "regeneration added little: raise k_memories for more regenerated rows per user, "
            f"or {'lower beta' if beta_set else 'raise max_pattern_ratio'} for more patterns",
        ),
    }
    if patterns_only:
        advice["regenerated"] = advice["pattern"]
    for label, share in comp["shares"].items():
        if share > SOURCE_SHARE_LIMIT:
            n = comp["counts"][label]
            times = f", {n / base:.1f}x the {base:,} original rows" if base and label != "original" else ""
            parameter, fix = advice[label]
            out.append({
                "code": f"{label}_rows_dominate",
                "message": f"{label} rows dominate the regenerated dataset: {n:,} of "
                f"{total:,} rows ({share:.0%}){times}; {fix}",
                "parameter": parameter,
            })
    if comp["short_share"] > SHORT_SHARE_LIMIT:
        by_source = comp["short_rows_by_source"]
        worst = max(by_source, key=by_source.get)
        parameter, fix = advice["pattern"] if worst == "pattern" else advice["regenerated"]
        if worst == "original":  # original rows have at least 3 items unless the log is tiny
            parameter, fix = "max_len", "the users' own rows are this short: check the log"
        out.append({
            "code": "short_rows_dominate",
            "message": f"{comp['short_share']:.0%} of the {total:,} rows hold at most {comp['short_items']} items "
            f"(a single next-item target), most of them {worst} rows ({by_source[worst]:,}); {fix}",
            "parameter": parameter,
        })
    return out


def format_warnings(warnings: list[dict[str, str]]) -> list[str]:
    """One line per warning for a terminal: ``warning: <message> [parameter: <name>]``."""
    return [f"warning: {w['message']} [parameter: {w['parameter']}]" for w in warnings]
