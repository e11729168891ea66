"""Read an interaction log in any supported format into one canonical frame.

The result always has the columns ``user`` (String, original id), ``item``
(String), ``timestamp`` (Float64 seconds, or the position in the line for the
sequence-text format) and ``order`` (UInt64, original row order, used to break
timestamp ties stably); ``rating`` (Float64) is added when ``rating_col`` is set.

Bad input raises a :class:`~models.data.errors.DataError` naming the file, the
line (the row for Parquet and in-memory frames) and the column. The happy path
is one validating byte pass plus one polars scan; locating an error re-reads
the file, which is fine because it only happens once, on failure.

One concern per module, the public names re-exported here:

* :mod:`~models.data.readers.interactions`: :func:`read_interactions`,
  :func:`frame_to_interactions`;
* :mod:`~models.data.readers.files`: ``FORMATS``, :func:`format_from_extension`,
  gunzip, format sniffing, the UTF-8 check;
* :mod:`~models.data.readers.columns`: ``ColumnRef``, column roles, header sniffing;
* :mod:`~models.data.readers.formats`: the delimited, JSON-lines and sequence-text readers;
* :mod:`~models.data.readers.finish`: casting, timestamp parsing and error location
  shared by every reader.
"""

from __future__ import annotations

from models.data.readers.columns import ColumnRef
from models.data.readers.files import FORMATS, format_from_extension
from models.data.readers.interactions import frame_to_interactions, read_interactions

__all__ = [
    "FORMATS",
    "ColumnRef",
    "format_from_extension",
    "frame_to_interactions",
    "read_interactions",
]
