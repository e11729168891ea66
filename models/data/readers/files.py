"""Files before parsing: the supported formats and their extensions, gunzip,
sniffing the format from the first bytes, and one streaming check that text
is UTF-8 without NUL bytes."""

from __future__ import annotations

import codecs
import gzip
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from models.data.errors import EmptyDataError, EncodingError, FormatError

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
_HEAD_BYTES = 1 << 16
_CHUNK_BYTES = 1 << 22


def format_from_extension(path: str | Path) -> str | None:
    name = Path(path).name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return _EXTENSIONS.get(Path(name).suffix)


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
