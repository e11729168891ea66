"""Typed errors for bad input data.

Every error names where the problem is (file, line or Parquet row, column)
so that the CLI and the web layer can show it verbatim, e.g.
``ratings.csv line 17, column 'timestamp': cannot parse 'yesterday' as a timestamp``.
"""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Input data that cannot be used, with its location.

    ``line`` is 1-based: a physical line for text formats, a row for Parquet
    (``unit="row"``) and in-memory frames.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        column: str | None = None,
        unit: str = "line",
    ) -> None:
        self.message = message
        self.file = None if file is None else str(file)
        self.line = line
        self.column = column
        self.unit = unit
        super().__init__(str(self))

    @property
    def location(self) -> str:
        parts = []
        if self.file is not None:
            parts.append(Path(self.file).name or self.file)
        if self.line is not None:
            parts.append(f"{self.unit} {self.line}")
        where = " ".join(parts)
        if self.column is not None:
            where = f"{where}, column '{self.column}'" if where else f"column '{self.column}'"
        return where

    def __str__(self) -> str:
        where = self.location
        return f"{where}: {self.message}" if where else self.message

    def __reduce__(self):  # keep the fields when pickled (Celery ships exceptions)
        return (_rebuild, (type(self), self.message, self.file, self.line, self.column, self.unit))


def _rebuild(cls, message, file, line, column, unit):  # pragma: no cover - used by pickle
    return cls(message, file=file, line=line, column=column, unit=unit)


class EmptyDataError(DataError):
    """The input has no usable rows (empty file, header only, nothing left after filtering)."""


class FormatError(DataError):
    """The bytes are not the announced format (binary garbage, wrong delimiter, bad JSON...)."""


class EncodingError(FormatError):
    """The text is not valid UTF-8."""


class ColumnError(DataError):
    """A required column is missing or holds empty values."""


class TimestampError(DataError):
    """A timestamp value is neither a number nor an ISO-8601 date/time."""


class TooFewUsersError(DataError):
    """The interactions belong to a single user: nothing to learn across users."""


class KCoreError(DataError):
    """Iterative k-core filtering removed every interaction."""
