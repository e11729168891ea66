"""Shared finishing of every reader: cast to the canonical columns, parse
timestamps (epoch seconds or ISO-8601), locate the first bad value by file,
line and column, and the final sanity checks."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import polars as pl

from models.data.errors import (
    ColumnError,
    DataError,
    EmptyDataError,
    FormatError,
    TimestampError,
    TooFewUsersError,
)

# Tried in order on values that are not plain numbers; tz-less values are read as UTC.
_ISO_FORMATS = (
    "%Y-%m-%dT%H:%M:%S%.f%#z",
    "%Y-%m-%d %H:%M:%S%.f%#z",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M%#z",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%d",
)


def _timestamp_expr(raw: pl.Expr, dtype: pl.DataType, iso: bool) -> pl.Expr:
    if dtype.is_numeric():
        ts = raw.cast(pl.Float64)
    elif isinstance(dtype, pl.Datetime):
        ts = raw.dt.epoch("us").cast(pl.Float64) / 1e6
    elif isinstance(dtype, pl.Date):
        ts = raw.cast(pl.Datetime("us")).dt.epoch("us").cast(pl.Float64) / 1e6
    else:
        s = raw.cast(pl.String).str.strip_chars()
        parts = [s.cast(pl.Float64, strict=False)]
        if iso:
            for fmt in _ISO_FORMATS:
                dt = s.str.to_datetime(fmt, strict=False, time_unit="us")
                parts.append(dt.dt.epoch("us").cast(pl.Float64) / 1e6)
        ts = pl.coalesce(parts)
    return pl.when(ts.is_finite()).then(ts)


def _finish(
    lf: pl.LazyFrame,
    roles: dict[str, str | None],
    label: str | None,
    row_to_line: Callable[[int], int],
    *,
    unit: str,
    text: bool,
    diagnose: Callable[[Exception], DataError] | None = None,
) -> pl.DataFrame:
    schema = lf.collect_schema()
    base = lf.with_row_index("_row").select(
        "_row",
        user=pl.col(roles["user"]).cast(pl.String),
        item=pl.col(roles["item"]).cast(pl.String),
        **({} if roles["time"] is None else {"_ts": pl.col(roles["time"])}),
        **({} if roles["rating"] is None else {"_rating": pl.col(roles["rating"])}),
    )
    ts_dtype = schema[roles["time"]] if roles["time"] is not None else None

    def locate(row: int, column: str | None, message: str, cls: type[DataError]) -> DataError:
        return cls(message, file=label, line=row_to_line(row), column=column, unit=unit)

    def build(iso: bool) -> pl.LazyFrame:
        extra = {}
        if ts_dtype is not None:
            extra["timestamp"] = _timestamp_expr(pl.col("_ts"), ts_dtype, iso)
        if roles["rating"] is not None:
            extra["rating"] = (
                pl.col("_rating").cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)
            )
        return base.with_columns(**extra).drop("_ts", "_rating", strict=False)

    iso = ts_dtype == pl.String and _needs_iso(base)
    try:
        df = build(iso).collect(engine="streaming")
        if ts_dtype == pl.String and not iso and df["timestamp"].null_count():
            df = build(True).collect(engine="streaming")
    except pl.exceptions.PolarsError as e:
        if diagnose is None:
            raise FormatError(f"could not be read: {str(e).splitlines()[0]}", file=label) from None
        raise diagnose(e) from None
    if text:  # blank lines come through as all-null rows
        blank = pl.all_horizontal(pl.col("user").is_null(), pl.col("item").is_null())
        if "timestamp" in df.columns:
            blank = blank & pl.col("timestamp").is_null()
        blank_rows = df.select(blank.sum()).item()
        if blank_rows:  # filtering copies every string column: only when needed
            df = df.filter(~blank)
    for col, role in (("user", "user"), ("item", "item"), ("rating", "rating")):
        if col in df.columns and df[col].null_count():
            row = int(df.filter(pl.col(col).is_null())["_row"][0])
            what = "a number" if col == "rating" else "a value"
            raise locate(row, roles[role], f"empty or invalid value: expected {what}", ColumnError)
    if ts_dtype is None:
        df = df.with_columns(timestamp=pl.int_range(pl.len()).cast(pl.Float64))
    elif df["timestamp"].null_count():
        row = int(df.filter(pl.col("timestamp").is_null())["_row"][0])
        raw = base.filter(pl.col("_row") == row).select("_ts").collect()["_ts"][0]
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            raise locate(row, roles["time"], "missing timestamp", TimestampError)
        header_hint = row == 0 and unit == "line"
        hint = " (is the first line a header? pass has_header=True)" if header_hint else ""
        raise locate(
            row,
            roles["time"],
            f"cannot parse {raw!r} as a timestamp (expected epoch seconds or ISO-8601){hint}",
            TimestampError,
        )
    df = df.drop("_row").with_columns(order=pl.int_range(pl.len(), dtype=pl.UInt64))
    cols = ["user", "item", "timestamp", "order"] + (["rating"] if "rating" in df.columns else [])
    return _validated(df.select(cols), label, roles["user"] or "user")


def _needs_iso(base: pl.LazyFrame) -> bool:
    sample = base.select("_ts").head(1000).collect()["_ts"].cast(pl.String).drop_nulls()
    sample = sample.str.strip_chars()
    return bool(sample.cast(pl.Float64, strict=False).null_count())


def _delimited_diagnosis(
    path: Path, label: str, sep: str, expected: int, quoted: bool
) -> Callable[[Exception], DataError]:
    """Find the first line polars choked on (error path only)."""

    def diagnose(e: Exception) -> DataError:
        quoting = csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter=sep, quoting=quoting)
            for record in reader:
                if len(record) > expected:
                    return FormatError(
                        f"{len(record)} fields where the first line has {expected}; check the "
                        "delimiter and quoting",
                        file=label,
                        line=reader.line_num,
                    )
        return FormatError(f"could not be read: {str(e).splitlines()[0]}", file=label)

    return diagnose


def _validated(df: pl.DataFrame, label: str | None, user_col: str) -> pl.DataFrame:
    if len(df) == 0:
        raise EmptyDataError("no interactions (a header but no data rows?)", file=label)
    if not (df["user"] != df["user"][0]).any():  # cheaper than n_unique() on 10M strings
        raise TooFewUsersError(
            f"all {len(df)} interactions belong to a single user {df['user'][0]!r}; "
            "check that the user column is right",
            file=label,
            column=user_col,
        )
    return df
