"""``dr4sr mine``: prepare a dataset, mine rule-based patterns and build pre-training pairs."""

from __future__ import annotations

import json
import time
from enum import StrEnum
from pathlib import Path

import typer

from app.tty import TerminalProgress


class MatchMode(StrEnum):
    anywhere = "anywhere"
    window = "window"


def mine(
    file: Path = typer.Argument(
        ..., exists=True, dir_okay=False, readable=True, help="Interaction log."
    ),
    format: str | None = typer.Option(None, "--format", help="Input format (default: detect)."),
    user_col: str | None = typer.Option(None, help="User column (default: user_id)."),
    item_col: str | None = typer.Option(None, help="Item column (default: item_id)."),
    time_col: str | None = typer.Option(None, help="Timestamp column (default: timestamp)."),
    user_core: int = typer.Option(5, help="Drop users with fewer interactions (iterated)."),
    item_core: int = typer.Option(5, help="Drop items with fewer interactions (iterated)."),
    max_len: int = typer.Option(50, help="Window of most recent items per user."),
    alpha: int = typer.Option(5, help="Max span: a pattern lies within alpha consecutive items."),
    beta: int | None = typer.Option(
        None,
        help="Min support: number of distinct users. Default: adaptive, the smallest beta >= 2 "
        "keeping patterns within --max-pattern-ratio x the original rows.",
    ),
    max_pattern_ratio: float = typer.Option(
        2.0, help="Budget of the adaptive beta: patterns per original row (ignored when --beta is set)."
    ),
    max_pairs: int = typer.Option(10, help="Patterns kept per user for pre-training pairs."),
    match: MatchMode = typer.Option(
        MatchMode.anywhere, help="Pair when the pattern occurs anywhere or inside alpha positions."
    ),
    seed: int = typer.Option(2024, help="Seed of the pair sampling."),
    as_json: bool = typer.Option(False, "--json", help="Print the statistics as one JSON object."),
) -> None:
    """Mine patterns (spec §2.1) and build (sequence, pattern) pairs (§2.3); print statistics."""
    # Imported here so `dr4sr --help` stays fast and other commands work while
    # this area's dependencies are being edited.
    from models.data.preprocess import prepare
    from models.patterns import build_pairs, describe, mine_patterns, pattern_budget

    try:
        with TerminalProgress() as progress:
            t0 = time.perf_counter()
            # Only forward the columns given, so prepare's own defaults apply.
            columns = {"user_col": user_col, "item_col": item_col, "time_col": time_col}
            dataset = prepare(
                file,
                format=format,
                user_core=user_core,
                item_core=item_core,
                max_len=max_len,
                progress=progress,
                **{k: v for k, v in columns.items() if v is not None},
            )
            split = dataset.split(max_len=max_len)
            t1 = time.perf_counter()
            budget = None if beta is not None else pattern_budget(len(split.train), max_pattern_ratio)
            patterns = mine_patterns(
                split.mining, alpha=alpha, beta=beta or 2, progress=progress, max_patterns=budget
            )
            t2 = time.perf_counter()
            pairs = build_pairs(
                split.pair_source,
                patterns,
                max_per_source=max_pairs,
                match=match.value,
                alpha=alpha,
                seed=seed,
                progress=progress,
            )
            t3 = time.perf_counter()
    except ValueError as err:  # bad input data or parameters: the message names the problem
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(code=2) from err
    timings = {"prepare_s": t1 - t0, "mine_s": t2 - t1, "pair_s": t3 - t2}
    users = len(split.pair_source)
    stats = {
        "users": users,
        "items": int(dataset.num_items),
        **describe(patterns, pairs, max_per_source=max_pairs),
        "beta": int(patterns.min_support),
        "beta_rule": "set" if beta is not None else "adaptive",
        "max_patterns": budget,
        "pattern_ratio": round(len(patterns) / max(len(split.train), 1), 4),
        **{k: round(v, 3) for k, v in timings.items()},
    }
    over = len(patterns) > pattern_budget(len(split.train), max_pattern_ratio)
    warning = (
        f"warning: {len(patterns):,} patterns are {stats['pattern_ratio']:.1f}x the {len(split.train):,} "
        f"original rows: pattern rows would dominate a regenerated dataset; raise --beta or leave it unset "
        f"for the adaptive default [parameter: beta]"
        if over
        else None
    )
    if as_json:
        typer.echo(json.dumps(stats))
        if warning:
            typer.echo(warning, err=True)
        return
    lengths = ", ".join(f"{k}: {v:,}" for k, v in stats["patterns_per_length"].items())
    typer.echo(f"users {users:,}  items {stats['items']:,}")
    rule = (
        f"adaptive: <= {max_pattern_ratio:g} x {len(split.train):,} original rows"
        if beta is None
        else "set"
    )
    typer.echo(
        f"patterns {stats['patterns']:,} (alpha={alpha}, beta={stats['beta']} {rule}); "
        f"per length {lengths or '-'}"
    )
    typer.echo(f"pattern rows per original row {stats['pattern_ratio']:.2f}")
    typer.echo(f"max support {stats['max_support']}")
    typer.echo(
        f"pairs {stats['pairs']:,} ({match.value}, <= {max_pairs} per user, seed {seed}); "
        f"{stats['mean_pairs_per_source']:.2f} per user"
    )
    typer.echo(
        f"users with no pair {stats['sources_without_pair']:,} "
        f"({stats['sources_without_pair'] / max(users, 1):.1%}); "
        f"users at the cap {stats['sources_at_cap']:,} ({stats['sources_at_cap'] / max(users, 1):.1%})"
    )
    if warning:
        typer.echo(warning, err=True)
    typer.echo(
        f"time: prepare {timings['prepare_s']:.2f} s, mine {timings['mine_s']:.2f} s, "
        f"pairs {timings['pair_s']:.2f} s"
    )


def register(app: typer.Typer) -> None:
    app.command("mine")(mine)
