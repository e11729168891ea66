"""The two entry points: :func:`read_interactions` (a file in any supported
format) and :func:`frame_to_interactions` (an in-memory or Parquet frame)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from models.data.errors import FormatError
from models.data.readers.columns import ColumnRef, _resolve_columns
from models.data.readers.files import (
    FORMATS,
    _check_binary,
    _check_text,
    _plain_file,
    _sniff_format,
    format_from_extension,
)
from models.data.readers.finish import _finish, _validated
from models.data.readers.formats import _read_delimited, _read_jsonl, _read_txt


def read_interactions(
    path: str | Path,
    format: str | None = None,
    *,
    user_col: ColumnRef = "user_id",
    item_col: ColumnRef = "item_id",
    time_col: ColumnRef | None = "timestamp",
    rating_col: ColumnRef | None = None,
    has_header: bool | None = None,
    delimiter: str | None = None,
) -> pl.DataFrame:
    """Read ``path`` into the canonical frame (see the module docstring).

    Columns are names, or 0-based positions (ints). Without a header, csv/tsv
    columns are ``user,item,timestamp`` or ``user,item,rating,timestamp`` by
    position. ``time_col=None`` uses the file order as time. ``has_header=None``
    sniffs the first two lines. Gzip is recognised by its magic bytes.
    """
    path = Path(path)
    if format is not None and format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    if delimiter is not None and len(delimiter) != 1:
        raise ValueError(f"delimiter must be a single character, got {delimiter!r}")
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    label = path.name
    cols = {"user": user_col, "item": item_col, "time": time_col, "rating": rating_col}
    with _plain_file(path, label) as (real, head):
        fmt = format or format_from_extension(path) or _sniff_format(head, label)
        if fmt == "parquet":
            if head[:4] != b"PAR1":
                raise FormatError("not a Parquet file (no 'PAR1' magic bytes)", file=label)
            try:
                lf = pl.scan_parquet(real)
                lf.collect_schema()
            except pl.exceptions.PolarsError as e:
                raise FormatError(f"unreadable Parquet file: {e}", file=label) from None
            return frame_to_interactions(
                lf,
                user_col=user_col,
                item_col=item_col,
                time_col=time_col,
                rating_col=rating_col,
                file=label,
            )
        _check_binary(head, label, fmt)
        if fmt == "txt":
            _check_text(real, label)
            return _validated(_read_txt(real, label), label, "user")
        if fmt == "jsonl":
            _check_text(real, label)
            return _read_jsonl(real, label, cols)
        return _read_delimited(real, label, fmt, head, cols, has_header, delimiter)


def frame_to_interactions(
    frame: pl.DataFrame | pl.LazyFrame,
    *,
    user_col: ColumnRef = "user_id",
    item_col: ColumnRef = "item_id",
    time_col: ColumnRef | None = "timestamp",
    rating_col: ColumnRef | None = None,
    file: str | None = None,
) -> pl.DataFrame:
    """Canonicalise an in-memory (or Parquet) frame; errors name 1-based rows.

    A frame that is already canonical (``user``/``item``/``timestamp``) is
    accepted as is when the default column names are not present.
    """
    lf = frame.lazy()
    names = lf.collect_schema().names()
    if "user" in names and "item" in names and user_col == "user_id" and "user_id" not in names:
        user_col, item_col = "user", "item"
        if time_col == "timestamp" and "timestamp" not in names:
            time_col = None
    if "order" in names:  # a canonical frame: its rows may have been reordered since reading
        lf = lf.sort("order", maintain_order=True)
    cols = {"user": user_col, "item": item_col, "time": time_col, "rating": rating_col}
    roles = _resolve_columns(names, True, cols, file)
    return _finish(lf, roles, file, lambda row: row + 1, unit="row", text=False)
