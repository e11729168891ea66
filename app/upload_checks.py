"""Bounded checks on a received upload, before anything is stored.

The readers in :mod:`models.data` trust their input's container: they gunzip
a whole file to disk and hand Parquet to polars. An upload is untrusted, so the
API first looks at it with hard limits:

* gzip is decompressed in a streaming pass, ``max_length`` bytes at a time,
  and refused as soon as the output passes ``max_decompressed_bytes`` or
  ``max_ratio`` times the compressed size (a "gzip bomb" expands ~1000x);
* Parquet's footer says how large its column data is once decompressed; the
  same limits apply, without reading any data;
* text (plain or gunzipped) is scanned for a line longer than
  ``max_line_bytes``, which no interaction log has and which would otherwise
  become a multi-megabyte item id;
* zip archives are refused by their magic bytes (only gzip is supported).

Errors are :class:`app.errors.ApiError` s naming the file and, for lines, the
line number.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from app.errors import Invalid, TooLarge, UnsupportedMediaType

GZIP_MAGIC = b"\x1f\x8b"
PARQUET_MAGIC = b"PAR1"
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
# Below this many expanded bytes the ratio is not checked: small text files
# compress very well (a repetitive 100 kB CSV can reach 200x) and are harmless.
RATIO_FLOOR_BYTES = 16 * 1024 * 1024
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class ContentLimits:
    max_decompressed_bytes: int
    max_ratio: float
    max_line_bytes: int


def check_upload(path: Path, limits: ContentLimits, label: str = "file") -> None:
    """Raise a 413/415/422 ApiError when the file at ``path`` breaks a limit."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(ZIP_MAGIC):
        raise UnsupportedMediaType(
            f"{label}: zip archives are not supported; upload the file itself or gzip it",
            field="file",
        )
    if head == PARQUET_MAGIC:
        _check_parquet(path, limits, label)
        return
    compressed = path.stat().st_size
    if head.startswith(GZIP_MAGIC):
        chunks = _gunzip(path, limits, compressed, label)
    else:
        chunks = _read(path)
    _check_lines(chunks, limits.max_line_bytes, label)


def _read(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def _too_large(label: str, expanded: int, compressed: int, limits: ContentLimits) -> None:
    if expanded > limits.max_decompressed_bytes:
        raise TooLarge(
            f"{label}: the compressed data expands beyond the limit of "
            f"{limits.max_decompressed_bytes} bytes",
            field="file",
        )
    if expanded > RATIO_FLOOR_BYTES and expanded > limits.max_ratio * max(compressed, 1):
        raise TooLarge(
            f"{label}: the compressed data expands more than {limits.max_ratio:g} times "
            f"({compressed} bytes -> over {expanded}); refused as a decompression bomb",
            field="file",
        )


def _gunzip(path: Path, limits: ContentLimits, compressed: int, label: str) -> Iterator[bytes]:
    """The decompressed bytes of every gzip member, at most CHUNK per step, so
    a bomb is stopped after one chunk past the limit, never fully inflated."""
    expanded = 0
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        with open(path, "rb") as f:
            data = f.read(CHUNK)
            while True:
                out = inflater.decompress(data, CHUNK)
                if out:
                    expanded += len(out)
                    _too_large(label, expanded, compressed, limits)
                    yield out
                if inflater.eof:
                    data = inflater.unused_data or f.read(CHUNK)
                    if not data.startswith(GZIP_MAGIC):
                        return  # no further member: trailing bytes are the reader's concern
                    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
                    continue
                data = inflater.unconsumed_tail or f.read(CHUNK)
                # with no input left, zlib may still hold output capped by max_length
                if not data and not out:
                    break
    except zlib.error as exc:
        raise Invalid(
            f"{label}: corrupt gzip data: {exc}", field="file", code="invalid_data"
        ) from None
    if not inflater.eof:
        raise Invalid(
            f"{label}: truncated gzip data (the stream ends before its end marker)",
            field="file",
            code="invalid_data",
        )


def _check_lines(chunks: Iterator[bytes], max_line: int, label: str) -> None:
    line = 1  # the line the current run of bytes belongs to
    run = 0  # bytes of that line seen so far
    first = True
    for chunk in chunks:
        if first:
            first = False
            if chunk.startswith(PARQUET_MAGIC):  # a gzipped Parquet file: not text
                for _ in chunks:  # still drain it through the size limits
                    pass
                return
        nl = chunk.find(b"\n")
        if nl < 0:
            run += len(chunk)
            if run > max_line:
                _long_line(label, line, max_line)
            continue
        if run + nl > max_line:
            _long_line(label, line, max_line)
        last = chunk.rfind(b"\n")
        if last - nl - 1 > max_line:  # some line inside the chunk may be too long
            for offset, part in enumerate(chunk[nl + 1 : last].split(b"\n")):
                if len(part) > max_line:
                    _long_line(label, line + 1 + offset, max_line)
        line += chunk.count(b"\n")
        run = len(chunk) - last - 1


def _long_line(label: str, line: int, max_line: int) -> None:
    raise Invalid(
        f"{label} line {line}: longer than {max_line} bytes; is this an interaction log "
        "(one interaction or one user per line)?",
        field="file",
        code="invalid_data",
    )


def _check_parquet(path: Path, limits: ContentLimits, label: str) -> None:
    import pyarrow.parquet as pq

    try:
        meta = pq.read_metadata(path)
    except Exception as exc:  # a malformed footer: pyarrow raises several types
        raise Invalid(
            f"{label}: unreadable Parquet file: {exc}", field="file", code="invalid_data"
        ) from None
    expanded = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    _too_large(label, expanded, path.stat().st_size, limits)
