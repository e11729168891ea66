"""Read an interaction log in any supported format into one canonical frame.

The result always has the columns ``user`` (String, original id), ``item``
(String), ``timestamp`` (Float64 seconds, or the position in the line for the
sequence-text format) and ``order`` (UInt64, original row order, used to break
timestamp ties stably); ``rating`` (Float64) is added when ``rating_col`` is set.

Bad input raises a :class:`~models.data.errors.DataError` naming the file, the
line (the row for Parquet and in-memory frames) and the column. The happy path
is one validating byte pass plus one polars scan; locating an error re-reads
the file, which is fine because it only happens once, on failure.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import json
import shutil
import tempfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import polars as pl

from models.data.errors import (
    ColumnError,
    DataError,
    EmptyDataError,
    EncodingError,
    FormatError,
    TimestampError,
    TooFewUsersError,
)

FORMATS = ("csv", "tsv", "jsonl", "parquet", "inter", "txt")
_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".inter": "inter",
    ".txt": "txt",
}
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
_HEAD_BYTES = 1 << 16
_CHUNK_BYTES = 1 << 22
_DELIMITERS = {",": "','", ";": "';'", "\t": "tab", "|": "'|'"}
# Columns of a header-less csv/tsv by count (the Amazon ratings files are the 4-column one).
_LAYOUTS = {
    2: ("user_id", "item_id"),
    3: ("user_id", "item_id", "timestamp"),
    4: ("user_id", "item_id", "rating", "timestamp"),
}
ColumnRef = str | int


def format_from_extension(path: str | Path) -> str | None:
    name = Path(path).name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return _EXTENSIONS.get(Path(name).suffix)


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


# -- files, compression, sniffing ---------------------------------------------
@contextmanager
def _plain_file(path: Path, label: str) -> Iterator[tuple[Path, bytes]]:
    """Yield an uncompressed path and its first bytes (gunzipping into a temp dir)."""
    with open(path, "rb") as f:
        head = f.read(_HEAD_BYTES)
    if not head:
        raise EmptyDataError("the file is empty", file=label)
    if head[:2] != b"\x1f\x8b":
        yield path, head
        return
    tmp = Path(tempfile.mkdtemp(prefix="dr4sr-gunzip-"))
    try:
        inner = tmp / (path.name[:-3] if path.name.lower().endswith(".gz") else path.name)
        try:
            with gzip.open(path, "rb") as src, open(inner, "wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK_BYTES)
        except (OSError, EOFError, zlib.error) as e:
            raise FormatError(f"corrupt gzip data: {e}", file=label) from None
        with open(inner, "rb") as f:
            head = f.read(_HEAD_BYTES)
        if not head:
            raise EmptyDataError("the file is empty (after gunzip)", file=label)
        yield inner, head
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_binary(head: bytes, label: str, fmt: str) -> None:
    if head[:4] == b"PAR1":
        raise FormatError(
            f"this is a Parquet file, not {fmt} text: use format 'parquet'", file=label
        )
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise EncodingError("UTF-16 text: re-save the file as UTF-8", file=label, line=1)
    # A stray control byte in text is reported with its line by _check_text; many
    # of them mean this is not text at all.
    control = sum(1 for b in head if b < 32 and b not in b"\t\n\r\x0b\x0c") + head.count(b"\x7f")
    if control > 0.02 * len(head):
        raise FormatError(f"binary data, not {fmt} text", file=label)


def _sniff_format(head: bytes, label: str) -> str:
    if head[:4] == b"PAR1":
        return "parquet"
    _check_binary(head, label, "a text")
    lines = _head_lines(head, 2)
    if not lines:
        raise EmptyDataError("the file contains only whitespace", file=label)
    first = lines[0]
    if first.lstrip().startswith("{"):
        return "jsonl"
    if "\t" in first and all(":" in f for f in first.split("\t")):
        return "inter"
    if "\t" in first:
        return "tsv"
    if "," in first:
        return "csv"
    if len(first.split()) >= 2:
        return "txt"
    raise FormatError(
        "cannot tell the format from the content; pass format= (csv, tsv, jsonl, parquet, inter, txt)",
        file=label,
    )


def _head_lines(head: bytes, n: int) -> list[str]:
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff")
    lines = [ln.rstrip("\r") for ln in text.split("\n")]
    if len(head) == _HEAD_BYTES and len(lines) > 1:
        lines = lines[:-1]  # the last one may be cut
    return [ln for ln in lines if ln.strip()][:n]


def _check_text(
    path: Path, label: str, sep: str | None = None, names: list[str] | None = None
) -> None:
    """One streaming pass: NUL bytes, invalid UTF-8 (with line and column), emptiness."""
    line, tail, seen_text = 1, b"", False
    with open(path, "rb") as f:
        while True:
            chunk = f.read(_CHUNK_BYTES)
            data = tail + chunk
            if not data:
                break
            nul = data.find(b"\x00")
            if nul >= 0:
                at = line + data.count(b"\n", 0, nul)
                raise FormatError("NUL byte: binary data, not text", file=label, line=at)
            try:
                text, used = codecs.utf_8_decode(data, "strict", not chunk)
            except UnicodeDecodeError as e:
                at = line + data.count(b"\n", 0, e.start)
                start = data.rfind(b"\n", 0, e.start) + 1
                column = None
                if sep is not None and names:
                    field = data[start : e.start].count(sep.encode())
                    column = names[field] if field < len(names) else None
                raise EncodingError(
                    f"invalid UTF-8 byte 0x{data[e.start]:02x} at byte {e.start - start + 1} "
                    "of the line; re-save the file as UTF-8",
                    file=label,
                    line=at,
                    column=column,
                ) from None
            seen_text = seen_text or bool(text.strip())
            line += data.count(b"\n", 0, used)
            tail = data[used:]
            if not chunk:
                break
    if not seen_text:
        raise EmptyDataError("the file contains only whitespace", file=label)


# -- columns --------------------------------------------------------------------
def _resolve_columns(
    names: list[str], header: bool, cols: dict, label: str | None
) -> dict[str, str | None]:
    """Map the roles user/item/time/rating to actual column names."""
    positional = {"user": 0, "item": 1, "time": len(names) - 1, "rating": 2}
    out: dict[str, str | None] = {}
    missing = []
    for role, ref in cols.items():
        if ref is None:
            out[role] = None
        elif isinstance(ref, int):
            if not 0 <= ref < len(names):
                raise ColumnError(
                    f"{role} column position {ref} is out of range: the data has "
                    f"{len(names)} columns",
                    file=label,
                )
            out[role] = names[ref]
        elif header:
            if ref not in names:
                missing.append(ref)
            out[role] = ref
        else:
            if len(names) not in (3, 4) and not (len(names) == 2 and role in ("user", "item")):
                raise ColumnError(
                    f"found {len(names)} columns and no header; the default layout is "
                    "user,item[,rating],timestamp: pass column positions, a header, or "
                    "time_col=None to use the file order as time",
                    file=label,
                )
            if role == "rating" and len(names) < 4:
                missing.append(str(ref))
            out[role] = names[positional[role]]
    if missing:
        found = ", ".join(repr(n) for n in names)
        hint = "" if header else " (the file has no header: columns are taken by position)"
        raise ColumnError(
            f"missing column(s) {', '.join(repr(m) for m in missing)}; found {found}{hint}",
            file=label,
        )
    return out


def _looks_like_value(field: str) -> bool:
    field = field.strip().strip('"')
    try:
        float(field)
        return True
    except ValueError:
        pass
    try:
        datetime.fromisoformat(field)
        return True
    except ValueError:
        return False


def _sniff_header(first: list[str], second: list[str] | None, cols: dict) -> bool:
    wanted = {v for v in cols.values() if isinstance(v, str)}
    if wanted & {f.strip().strip('"') for f in first}:
        return True
    if second is None:
        return False
    return not any(map(_looks_like_value, first)) and any(map(_looks_like_value, second))


# -- format readers -------------------------------------------------------------
def _read_delimited(
    path: Path,
    label: str,
    fmt: str,
    head: bytes,
    cols: dict,
    has_header: bool | None,
    delimiter: str | None,
) -> pl.DataFrame:
    sep = delimiter or ("," if fmt == "csv" else "\t")
    lines = _head_lines(head, 2)
    if not lines:
        raise EmptyDataError("the file contains only whitespace", file=label)
    first = lines[0].split(sep)
    if len(first) == 1:
        others = [d for d in _DELIMITERS if d != sep and d in lines[0]]
        if others:
            d = others[0]
            raise FormatError(
                f"found a single column {lines[0][:60]!r} when splitting on "
                f"{_DELIMITERS.get(sep, repr(sep))}; the file looks {_DELIMITERS[d]}-delimited: "
                f"pass delimiter={d!r}",
                file=label,
                line=1,
            )
    header = True if fmt == "inter" else has_header
    if header is None:
        header = _sniff_header(first, lines[1].split(sep) if len(lines) > 1 else None, cols)
    names = [f.strip().strip('"') for f in first]
    if fmt == "inter":
        names = [n.split(":", 1)[0] for n in names]
    _check_text(path, label, sep, names if header else None)
    lf = pl.scan_csv(
        path,
        separator=sep,
        has_header=header,
        infer_schema=False,
        quote_char=None if fmt == "inter" else '"',
        raise_if_empty=False,
    )
    raw_names = lf.collect_schema().names()
    if fmt == "inter":
        lf = lf.rename(dict(zip(raw_names, names, strict=True)))
        raw_names = names
    if not header and len(raw_names) in _LAYOUTS:  # name positional columns for messages
        lf = lf.rename(dict(zip(raw_names, _LAYOUTS[len(raw_names)], strict=True)))
        raw_names = list(_LAYOUTS[len(raw_names)])
    roles = _resolve_columns(raw_names, header, cols, label)
    diagnose = _delimited_diagnosis(path, label, sep, len(raw_names), quoted=fmt != "inter")
    return _finish(
        lf,
        roles,
        label,
        lambda row: row + 1 + int(header),
        unit="line",
        text=True,
        diagnose=diagnose,
    )


def _read_jsonl(path: Path, label: str, cols: dict) -> pl.DataFrame:
    keys: dict[str, None] = {}
    for line_no, obj in _json_lines(path, label, limit=1000):
        if not isinstance(obj, dict):
            raise FormatError("expected one JSON object per line", file=label, line=line_no)
        keys.update(dict.fromkeys(obj))
    names = list(keys)
    roles = _resolve_columns(names, True, cols, label)
    schema = {c: pl.String for c in roles.values() if c is not None}
    lf = pl.scan_ndjson(path, schema=schema)

    def row_to_line(row: int) -> int:
        for i, (line_no, _) in enumerate(_json_lines(path, label)):
            if i == row:
                return line_no
        return row + 1

    return _finish(lf, roles, label, row_to_line, unit="line", text=True)


def _json_lines(path: Path, label: str, limit: int | None = None) -> Iterator[tuple[int, object]]:
    with open(path, encoding="utf-8-sig") as f:
        count = 0
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as e:
                raise FormatError(f"invalid JSON: {e.msg}", file=label, line=line_no) from None
            count += 1
            if limit is not None and count >= limit:
                return


def _read_txt(path: Path, label: str) -> pl.DataFrame:
    lines = (
        pl.scan_lines(path, name="line")
        .with_row_index("_line", offset=1)
        .select("_line", tok=pl.col("line").str.extract_all(r"\S+"))
        .filter(pl.col("tok").list.len() > 0)
        .select("_line", user=pl.col("tok").list.first(), item=pl.col("tok").list.slice(1))
        .collect()
    )
    dup = lines.filter(pl.col("user").is_duplicated())
    if len(dup):
        user = dup["user"][0]
        where = dup.filter(pl.col("user") == user)["_line"].to_list()
        raise FormatError(
            f"user {user!r} appears on lines {where[0]} and {where[1]}; a sequence file has one "
            "line per user",
            file=label,
            line=int(where[1]),
        )
    if len(lines) and lines["item"].list.len().max() == 0:
        raise FormatError(
            "no line has items after the user id, so this is not a 'user item item ...' file"
            + (" (it looks comma-separated: use format 'csv')" if "," in lines["user"][0] else ""),
            file=label,
            line=int(lines["_line"][0]),
        )
    out = (
        lines.lazy()
        .with_columns(timestamp=pl.int_ranges(pl.col("item").list.len(), dtype=pl.Int64))
        .explode(["item", "timestamp"])
        .drop_nulls("item")
        .select(
            "user",
            "item",
            pl.col("timestamp").cast(pl.Float64),
            order=pl.int_range(pl.len(), dtype=pl.UInt64),
        )
        .collect()
    )
    return out


# -- shared finishing: cast, parse timestamps, locate errors --------------------
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
