"""One reader per text format: delimited (csv, tsv, RecBole .inter), JSON
lines and one-line sequences (txt); each hands its frame to
:func:`~models.data.readers.finish._finish`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from models.data.errors import EmptyDataError, FormatError
from models.data.readers.columns import _resolve_columns, _sniff_header
from models.data.readers.files import _check_text, _head_lines
from models.data.readers.finish import _delimited_diagnosis, _finish

_DELIMITERS = {",": "','", ";": "';'", "\t": "tab", "|": "'|'"}
# Columns of a header-less csv/tsv by count (the Amazon ratings files are the 4-column one).
_LAYOUTS = {
    2: ("user_id", "item_id"),
    3: ("user_id", "item_id", "timestamp"),
    4: ("user_id", "item_id", "rating", "timestamp"),
}


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
