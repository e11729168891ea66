"""Write sequences (original, pattern or regenerated rows) back in original ids.

Formats: ``parquet`` (row, user, source, items: list<str>), ``jsonl``
({"row", "user", "source", "items"}), ``csv`` (long: row,user,source,item,
position), ``inter`` (RecBole atomic, long: session_id, item_id, timestamp =
position) and ``txt`` (``row item item ...``). Rows are numbered from 1, as
users are; positions from 0. Rows without a user (patterns, regenerated rows)
get an empty user. Files are written chunk by chunk into a temp file that is
renamed into place at the end, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from models.data.errors import DataError, FormatError
from models.data.preprocess import PreparedDataset
from models.data.sequences import RowSource, Sequences

EXPORT_FORMATS = ("parquet", "jsonl", "csv", "inter", "txt")
_SUFFIX = {
    ".parquet": "parquet",
    ".jsonl": "jsonl",
    ".csv": "csv",
    ".inter": "inter",
    ".txt": "txt",
}
_INTER_HEADER = "session_id:token\titem_id:token\ttimestamp:float\n"
_CHUNK_ROWS = 1 << 15


def export_format(path: str | Path, format: str | None) -> str:
    fmt = format or _SUFFIX.get(Path(path).suffix.lower())
    if fmt not in EXPORT_FORMATS:
        raise ValueError(
            f"cannot export {Path(path).name!r} as {fmt!r}: choose one of {', '.join(EXPORT_FORMATS)}"
        )
    return fmt


def write_sequences(
    path: str | Path,
    seqs: Sequences,
    dataset: PreparedDataset,
    format: str | None = None,
    *,
    source: np.ndarray | None = None,
    user: np.ndarray | None = None,
) -> Path:
    """Write ``seqs`` (item ids of ``dataset``) to ``path`` in original ids.

    ``source`` holds :class:`RowSource` codes per row (default: all original),
    ``user`` user indices 1..U per row (default/0: no user).
    """
    path = Path(path)
    fmt = export_format(path, format)
    n = len(seqs)
    source = np.full(n, int(RowSource.ORIGINAL), np.uint8) if source is None else np.asarray(source)
    user = np.zeros(n, np.int64) if user is None else np.asarray(user, dtype=np.int64)
    _validate(seqs, dataset, source, user, fmt)
    user_names = dataset.user_ids.copy()
    user_names[0] = ""
    source_names = np.array([s.label for s in sorted(RowSource)], dtype=str)
    with _atomic(path) as f:
        if fmt == "parquet":
            _write_parquet(f, _chunks(seqs, dataset, source_names[source], user_names[user]))
            return path
        if fmt == "inter":
            f.write(_INTER_HEADER.encode())
        for i, table in enumerate(_chunks(seqs, dataset, source_names[source], user_names[user])):
            _write_text_chunk(f, pl.from_arrow(table), fmt, first=i == 0)
    return path


def read_sequences(
    path: str | Path, format: str | None = None
) -> tuple[list[list[str]], list[str] | None]:
    """Read an export back: (rows of original item ids, source labels).

    ``inter`` and ``txt`` carry no source column: their labels come back as None.
    """
    path = Path(path)
    fmt = export_format(path, format)
    if fmt == "txt":
        rows = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    rows.append(line.split()[1:])
        return rows, None
    if fmt == "parquet":
        df = pl.read_parquet(path).sort("row")
    elif fmt == "jsonl":
        schema = {
            "row": pl.Int64,
            "user": pl.String,
            "source": pl.String,
            "items": pl.List(pl.String),
        }
        df = pl.read_ndjson(path, schema=schema).sort("row")
    else:
        if fmt == "inter":
            long = pl.read_csv(
                path,
                separator="\t",
                quote_char=None,
                infer_schema=False,
                new_columns=["row", "item", "position"],
            )
        else:
            long = pl.read_csv(path, infer_schema=False)
        long = long.with_columns(pl.col("row", "position").cast(pl.Int64)).sort("row", "position")
        aggs = [pl.col("item").alias("items")]
        if "source" in long.columns:
            aggs.append(pl.col("source").first())
        df = long.group_by("row", maintain_order=True).agg(aggs)
    sources = df["source"].to_list() if "source" in df.columns else None
    return df["items"].to_list(), sources


# -- internals --------------------------------------------------------------------
def _validate(
    seqs: Sequences, dataset: PreparedDataset, source: np.ndarray, user: np.ndarray, fmt: str
) -> None:
    n = len(seqs)
    if len(source) != n or len(user) != n:
        raise ValueError(f"source ({len(source)}) and user ({len(user)}) must have {n} entries")
    if n and (seqs.lengths == 0).any():
        row = int(np.flatnonzero(seqs.lengths == 0)[0]) + 1
        raise DataError("empty sequence: nothing to export", line=row, unit="row")
    items = seqs.items
    if len(items) and (items.min() < 1 or items.max() > dataset.num_items):
        bad = int(np.flatnonzero((items < 1) | (items > dataset.num_items))[0])
        row = int(np.searchsorted(seqs.offsets, bad, side="right"))
        raise DataError(
            f"item id {int(items[bad])} is outside 1..{dataset.num_items}", line=row, unit="row"
        )
    if n and (user.min() < 0 or user.max() > dataset.num_users):
        raise ValueError(f"user indices must be in 0..{dataset.num_users}")
    if n and (source.min() < 0 or source.max() >= len(RowSource)):
        raise ValueError("source codes must be RowSource values")
    if fmt in ("txt", "inter"):
        bad_ids = [s for s in dataset.item_ids[1:] if any(c.isspace() for c in s)]
        if bad_ids:
            raise FormatError(
                f"item id {bad_ids[0]!r} contains whitespace and cannot be written as {fmt}"
            )


def _chunks(
    seqs: Sequences, dataset: PreparedDataset, sources: np.ndarray, users: np.ndarray
) -> Iterator[pa.Table]:
    offsets = seqs.offsets
    for lo in range(0, len(seqs), _CHUNK_ROWS):
        hi = min(lo + _CHUNK_ROWS, len(seqs))
        ids = seqs.items[offsets[lo] : offsets[hi]]
        values = pa.array(dataset.item_ids[ids], type=pa.string())
        lists = pa.ListArray.from_arrays(
            pa.array((offsets[lo : hi + 1] - offsets[lo]).astype(np.int32)), values
        )
        yield pa.table(
            {
                "row": pa.array(np.arange(lo + 1, hi + 1, dtype=np.int64)),
                "user": pa.array(users[lo:hi], type=pa.string()),
                "source": pa.array(sources[lo:hi], type=pa.string()),
                "items": lists,
            }
        )
    if len(seqs) == 0:
        yield pa.table(
            {
                "row": pa.array([], pa.int64()),
                "user": pa.array([], pa.string()),
                "source": pa.array([], pa.string()),
                "items": pa.array([], pa.list_(pa.string())),
            }
        )


def _write_parquet(f: IO[bytes], tables: Iterator[pa.Table]) -> None:
    writer = None
    try:
        for table in tables:
            if writer is None:
                writer = pq.ParquetWriter(f, table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()


def _write_text_chunk(f: IO[bytes], df: pl.DataFrame, fmt: str, first: bool) -> None:
    if fmt == "jsonl":
        df.write_ndjson(f)
        return
    if fmt == "txt":
        line = pl.concat_str(
            [pl.col("row").cast(pl.String), pl.col("items").list.join(" ")], separator=" "
        )
        df.select(line.alias("l")).write_csv(f, include_header=False, quote_style="never")
        return
    long = (
        df.with_columns(position=pl.int_ranges(pl.col("items").list.len(), dtype=pl.Int64))
        .explode(["items", "position"])
        .rename({"items": "item"})
    )
    if fmt == "csv":
        long.select("row", "user", "source", "item", "position").write_csv(f, include_header=first)
    else:  # inter
        long.select("row", "item", "position").write_csv(
            f, separator="\t", include_header=False, quote_style="never"
        )


@contextmanager
def _atomic(path: Path) -> Iterator[IO[bytes]]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
