"""``dr4sr prepare`` and ``dr4sr synth``: data ingestion from the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from app.tty import TerminalProgress

# The models are imported inside the commands so `dr4sr --help` stays fast.


def _column(value: str | None) -> str | int | None:
    """A column name, a 0-based position (digits), or nothing (empty string)."""
    if value is None or value == "":
        return None
    return int(value) if value.isdigit() else value


def _fail(error: Exception) -> typer.Exit:
    typer.echo(f"error: {error}", err=True)
    return typer.Exit(code=1)


def prepare_command(
    file: Annotated[
        Path,
        typer.Argument(help="Interaction log (csv/tsv/jsonl/parquet/inter/txt, optionally .gz)."),
    ],
    format: Annotated[
        str | None, typer.Option("--format", help="Override the detected format.")
    ] = None,
    user_col: Annotated[
        str, typer.Option(help="User column name or 0-based position.")
    ] = "user_id",
    item_col: Annotated[
        str, typer.Option(help="Item column name or 0-based position.")
    ] = "item_id",
    time_col: Annotated[
        str, typer.Option(help="Timestamp column name or position; '' uses the file order.")
    ] = "timestamp",
    delimiter: Annotated[str | None, typer.Option(help="Field delimiter for csv/tsv.")] = None,
    header: Annotated[
        bool | None,
        typer.Option(
            "--header/--no-header", help="Whether csv/tsv has a header (default: sniffed)."
        ),
    ] = None,
    user_core: Annotated[
        int, typer.Option(help="Drop users with fewer interactions (iterative).")
    ] = 5,
    item_core: Annotated[
        int, typer.Option(help="Drop items with fewer interactions (iterative).")
    ] = 5,
    max_len: Annotated[int, typer.Option(help="Window length used by the split.")] = 50,
    out: Annotated[
        Path | None, typer.Option("--out", help="Save the prepared dataset to this directory.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the statistics as JSON.")] = False,
) -> None:
    """Read, k-core filter and index an interaction log; print its statistics."""
    from models.data.errors import DataError
    from models.data.preprocess import prepare

    try:
        with TerminalProgress() as progress:
            dataset = prepare(
                file,
                format=format,
                user_col=_column(user_col),
                item_col=_column(item_col),
                time_col=_column(time_col),
                has_header=header,
                delimiter=delimiter,
                user_core=user_core,
                item_core=item_core,
                max_len=max_len,
                progress=progress,
            )
        if out is not None:
            dataset.save(out)
    except (DataError, OSError, ValueError) as e:
        raise _fail(e) from None
    stats = dataset.stats
    if as_json:
        typer.echo(json.dumps(stats, indent=2))
    else:
        typer.echo(_format_stats(stats))
    if out is not None:
        typer.echo(f"saved to {out}")


def _format_stats(s: dict) -> str:
    rows = [
        ("dataset", s["name"]),
        ("users", f"{s['users']:,} (before k-core {s['users_before']:,})"),
        ("items", f"{s['items']:,} (before k-core {s['items_before']:,})"),
        ("interactions", f"{s['interactions']:,} (before k-core {s['interactions_before']:,})"),
        (
            "k-core",
            f"users >= {s['user_core']}, items >= {s['item_core']}, {len(s['kcore_passes'])} passes",
        ),
        ("mean length", f"{s['mean_length']:.2f} (max {s['max_length']:,})"),
        ("density", f"{100 * s['density']:.4f}%"),
        (f"longer than {s['max_len']}", f"{s['users_longer_than_window']:,} users"),
    ]
    if s.get("dropped_short_users"):
        rows.append(("dropped", f"{s['dropped_short_users']:,} users with < 4 interactions"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def synth_command(
    out: Annotated[Path, typer.Argument(help="Output file; the format follows the extension.")],
    users: Annotated[int, typer.Option(help="Number of users.")] = 500,
    items: Annotated[int, typer.Option(help="Number of items.")] = 300,
    patterns: Annotated[int, typer.Option(help="Number of planted patterns.")] = 40,
    noise: Annotated[
        float, typer.Option(help="Share of noise (and of perturbed occurrences).")
    ] = 0.3,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    format: Annotated[str | None, typer.Option("--format", help="Override the format.")] = None,
) -> None:
    """Write a synthetic interaction log with planted patterns (+ OUT.patterns.json)."""
    from models.data.errors import DataError
    from models.data.synthetic import generate, write

    try:
        data = generate(
            num_users=users, num_items=items, num_patterns=patterns, noise=noise, seed=seed
        )
        write(out, data, format)
        sidecar = out.with_name(out.name + ".patterns.json")
        sidecar.write_text(
            json.dumps({"patterns": [list(p) for p in data.patterns], "params": data.params})
        )
    except (DataError, OSError, ValueError) as e:
        raise _fail(e) from None
    n = len(data.interactions)
    typer.echo(
        f"wrote {n:,} interactions of {users:,} users to {out}; {len(data.patterns)} patterns in {sidecar}"
    )


def register(app: typer.Typer) -> None:
    app.command("prepare")(prepare_command)
    app.command("synth")(synth_command)
