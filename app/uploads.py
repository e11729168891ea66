"""Streaming ``multipart/form-data`` reception.

The request body is fed chunk by chunk into python-multipart's push parser;
the file part goes straight to a temporary file on disk while its size and
SHA-256 are computed, so an upload is never held in memory and one that
exceeds the limit is refused (413) as soon as the limit is crossed.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from app.errors import ApiError, Invalid, TooLarge

MAX_FIELD_BYTES = 64 * 1024
MAX_FIELDS = 32
# Multipart framing (boundaries, part headers, the small text fields) on top
# of the file itself; a Content-Length beyond limit + this is refused unread.
FRAMING_ALLOWANCE = 256 * 1024


@dataclass
class ReceivedUpload:
    path: Path
    filename: str | None
    size: int
    sha256: str
    fields: dict[str, str] = field(default_factory=dict)

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


class _Stop(Exception):
    """Raised from a parser callback to abandon the body."""

    def __init__(self, error: ApiError) -> None:
        self.error = error


def _disposition(value: bytes) -> tuple[str | None, str | None]:
    _, params = parse_options_header(value)
    name = params.get(b"name")
    filename = params.get(b"filename")
    return (
        name.decode("utf-8", "replace") if name is not None else None,
        filename.decode("utf-8", "replace") if filename is not None else None,
    )


class _Receiver:
    def __init__(self, out: IO[bytes], max_bytes: int, file_field: str, limit_text: str) -> None:
        self.out = out
        self.max_bytes = max_bytes
        self.limit_text = limit_text
        self.file_field = file_field
        self.digest = hashlib.sha256()
        self.size = 0
        self.filename: str | None = None
        self.file_seen = False
        self.fields: dict[str, str] = {}
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._is_file = False
        self._buffer = bytearray()

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": lambda d, s, e: self._header_field.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
        }

    def on_part_begin(self) -> None:
        self._headers = {}
        self._name = None
        self._is_file = False
        self._buffer = bytearray()

    def on_header_end(self) -> None:
        self._headers[bytes(self._header_field).lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def on_headers_finished(self) -> None:
        name, filename = _disposition(self._headers.get(b"content-disposition", b""))
        if name is None:
            raise _Stop(Invalid("a multipart part has no name", field=None))
        self._name = name
        if name == self.file_field:
            if self.file_seen:
                raise _Stop(Invalid("send exactly one file", field=self.file_field))
            self.file_seen = True
            self._is_file = True
            self.filename = filename
        elif len(self.fields) >= MAX_FIELDS:
            raise _Stop(Invalid(f"too many form fields (at most {MAX_FIELDS})"))

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._is_file:
            self.size += len(chunk)
            if self.size > self.max_bytes:
                raise _Stop(
                    TooLarge(f"the upload exceeds {self.limit_text}", field=self.file_field)
                )
            self.digest.update(chunk)
            self.out.write(chunk)
            return
        self._buffer.extend(chunk)
        if len(self._buffer) > MAX_FIELD_BYTES:
            raise _Stop(
                Invalid(f"form field too long (at most {MAX_FIELD_BYTES} bytes)", field=self._name)
            )

    def on_part_end(self) -> None:
        if not self._is_file and self._name is not None:
            try:
                self.fields[self._name] = self._buffer.decode("utf-8")
            except UnicodeDecodeError:
                raise _Stop(Invalid("form field is not UTF-8 text", field=self._name)) from None


async def receive_upload(
    request: Request,
    tmp_dir: Path,
    max_bytes: int,
    file_field: str = "file",
    limit_description: str | None = None,
) -> ReceivedUpload:
    """Stream the multipart body of ``request`` to a temporary file under
    ``tmp_dir``. Raises 413/415/422 :class:`ApiError` s; on error nothing is kept.
    ``limit_description`` names ``max_bytes`` in the 413 (e.g. a storage quota)."""
    limit_text = limit_description or f"the maximum size of {max_bytes} bytes"
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise ApiError(
            "send the dataset as multipart/form-data with a 'file' part",
            status=415,
            code="unsupported_media_type",
            field=file_field,
        )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + FRAMING_ALLOWANCE:
        raise TooLarge(f"the upload ({declared} bytes) exceeds {limit_text}", field=file_field)

    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="upload-")
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            receiver = _Receiver(out, max_bytes, file_field, limit_text)
            parser = MultipartParser(params[b"boundary"], receiver.callbacks())
            try:
                async for chunk in request.stream():
                    if chunk:
                        parser.write(chunk)
                parser.finalize()
            except _Stop as stop:
                raise stop.error from None
            except ApiError:
                raise
            except Exception as exc:  # python-multipart's own parse errors
                raise Invalid(f"malformed multipart body: {exc}") from None
        if not receiver.file_seen:
            raise Invalid("no file part named 'file' in the upload", field=file_field)
        return ReceivedUpload(
            path, receiver.filename, receiver.size, receiver.digest.hexdigest(), receiver.fields
        )
    except BaseException:
        path.unlink(missing_ok=True)
        raise
