"""Preprocessing (method spec §1.2): iterative k-core, id maps, chronological order.

``prepare`` turns an interaction log into a :class:`PreparedDataset`: per-user
chronological sequences of contiguous item ids (1..N, 0 = padding) plus the
maps back to the original ids. Everything after string ids are encoded runs
on integer numpy arrays, so a 10-million-row log stays well inside 2 GiB.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from models.data.errors import DataError, KCoreError
from models.data.readers import ColumnRef, frame_to_interactions, read_interactions
from models.data.sequences import Sequences, Split
from models.data.split import leave_one_out
from models.progress import Progress, ProgressEvent, no_progress

MIN_SPLIT_LENGTH = 4  # a leave-one-out split needs a 2-item train row + valid + test
_FILES = ("sequences.npz", "users.parquet", "items.parquet", "stats.json")


@dataclass
class PreparedDataset:
    """Chronological per-user sequences; row ``u-1`` of ``sequences`` is user ``u``."""

    name: str
    user_ids: np.ndarray  # (U+1,) str, original user ids, [0] == "" (padding)
    item_ids: np.ndarray  # (N+1,) str, original item ids, [0] == "" (padding)
    sequences: Sequences  # U rows of item ids in 1..N
    stats: dict = field(default_factory=dict)

    @property
    def num_users(self) -> int:
        return len(self.user_ids) - 1

    @property
    def num_items(self) -> int:
        return len(self.item_ids) - 1

    def split(self, max_len: int | None = None) -> Split:
        """Leave-one-out split (spec §1.3); ``max_len`` defaults to the one given to prepare."""
        return leave_one_out(self.sequences, max_len=max_len or int(self.stats.get("max_len", 50)))

    # -- persistence ------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write the dataset to ``directory`` atomically (temp dir + rename)."""
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
        try:
            np.savez(
                tmp / "sequences.npz", items=self.sequences.items, offsets=self.sequences.offsets
            )
            pl.DataFrame({"id": self.user_ids.tolist()}, schema={"id": pl.String}).write_parquet(
                tmp / "users.parquet"
            )
            pl.DataFrame({"id": self.item_ids.tolist()}, schema={"id": pl.String}).write_parquet(
                tmp / "items.parquet"
            )
            stats = {**self.stats, "name": self.name}
            (tmp / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True))
            if directory.exists():
                old = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex[:8]}"
                directory.rename(old)
                tmp.rename(directory)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> PreparedDataset:
        directory = Path(directory)
        missing = [f for f in _FILES if not (directory / f).is_file()]
        if missing:
            raise DataError(
                f"not a prepared dataset directory: missing {', '.join(missing)}", file=directory
            )
        with np.load(directory / "sequences.npz", allow_pickle=False) as npz:
            sequences = Sequences(npz["items"].astype(np.int64), npz["offsets"].astype(np.int64))
        user_ids = _read_ids(directory / "users.parquet")
        item_ids = _read_ids(directory / "items.parquet")
        stats = json.loads((directory / "stats.json").read_text())
        if len(user_ids) != len(sequences) + 1:
            raise DataError(
                f"{len(user_ids) - 1} user ids for {len(sequences)} sequences", file=directory
            )
        if len(sequences.items) and not 1 <= sequences.items.min() <= sequences.items.max() < len(
            item_ids
        ):
            raise DataError(f"item ids outside 1..{len(item_ids) - 1}", file=directory)
        return cls(str(stats.get("name", directory.name)), user_ids, item_ids, sequences, stats)


def _read_ids(path: Path) -> np.ndarray:
    ids = pl.read_parquet(path)["id"]
    return np.asarray(ids.to_list(), dtype=str)


def prepare(
    source: str | Path | pl.DataFrame,
    *,
    format: str | None = None,
    user_col: ColumnRef = "user_id",
    item_col: ColumnRef = "item_id",
    time_col: ColumnRef | None = "timestamp",
    has_header: bool | None = None,
    delimiter: str | None = None,
    user_core: int = 5,
    item_core: int = 5,
    max_len: int = 50,
    name: str | None = None,
    progress: Progress = no_progress,
) -> PreparedDataset:
    """Read, k-core filter, id-map and sort ``source`` (spec §1.2).

    * iterative k-core: drop users with < ``user_core`` rows, then items with
      < ``item_core`` rows, until a full pass removes nothing (duplicates kept);
    * ids numbered by first appearance in the filtered table (file order);
    * per-user stable sort by timestamp (ties keep file order);
    * users left with < 4 interactions cannot be split and are dropped.
    """
    if user_core < 1 or item_core < 1:
        raise ValueError("user_core and item_core must be at least 1")
    if max_len < MIN_SPLIT_LENGTH:
        raise ValueError(f"max_len must be at least {MIN_SPLIT_LENGTH}, got {max_len}")
    total = 4
    cols = {"user_col": user_col, "item_col": item_col, "time_col": time_col}
    if isinstance(source, pl.DataFrame | pl.LazyFrame):
        label = file = name or "dataframe"
        df = frame_to_interactions(source, **cols, file=name)
    else:
        label = name or _stem(Path(source))
        file = Path(source).name
        df = read_interactions(source, format, **cols, has_header=has_header, delimiter=delimiter)
    progress(ProgressEvent("prepare", 1, total, message=f"read {len(df)} interactions"))

    u_codes, user_strings = _encode(df, "user")
    i_codes, item_strings = _encode(df, "item")
    ts = df["timestamp"].to_numpy()
    n_before = len(df)
    del df  # from here on only integer arrays: the string columns are the bulk of the memory
    rows, passes = _kcore(u_codes, i_codes, user_core, item_core)
    if len(rows) == 0:
        raise KCoreError(_kcore_report(u_codes, i_codes, user_core, item_core, passes), file=file)
    progress(ProgressEvent("prepare", 2, total, message=f"{len(rows)} interactions after k-core"))

    users = _first_appearance_ids(u_codes[rows])
    short = np.bincount(users)[1:] < MIN_SPLIT_LENGTH
    dropped_short = int(short.sum())
    if dropped_short:
        rows = rows[~short[users - 1]]
        if len(rows) == 0:
            raise KCoreError(
                f"every user has fewer than {MIN_SPLIT_LENGTH} interactions after k-core "
                f"({user_core}/{item_core}); nothing can be split",
                file=file,
            )
        users = _first_appearance_ids(u_codes[rows])
    items = _first_appearance_ids(i_codes[rows])
    progress(ProgressEvent("prepare", 3, total, message="ids mapped"))

    order = np.lexsort((ts[rows], users))  # stable: timestamp ties keep file order
    lengths = np.bincount(users)[1:]
    sequences = Sequences.from_lengths(items[order], lengths)
    user_ids = _id_table(user_strings, u_codes[rows], users)
    item_ids = _id_table(item_strings, i_codes[rows], items)
    n_users, n_items = len(user_ids) - 1, len(item_ids) - 1
    stats = {
        "name": label,
        "users_before": int(len(user_strings)),
        "items_before": int(len(item_strings)),
        "interactions_before": int(n_before),
        "user_core": int(user_core),
        "item_core": int(item_core),
        "kcore_passes": passes,
        "dropped_short_users": dropped_short,
        "users": int(n_users),
        "items": int(n_items),
        "interactions": int(len(rows)),
        "mean_length": float(lengths.mean()),
        "max_length": int(lengths.max()),
        # sequence length -> users (string keys: the stats round-trip through JSON)
        "length_histogram": {
            str(int(k)): int(v) for k, v in zip(*np.unique(lengths, return_counts=True), strict=True)
        },
        "density": float(len(rows) / (n_users * n_items)),
        "max_len": int(max_len),
        "users_longer_than_window": int((lengths > max_len).sum()),
    }
    progress(ProgressEvent("prepare", total, total, message="sorted"))
    return PreparedDataset(label, user_ids, item_ids, sequences, stats)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".gz",):
        name = name.removesuffix(suffix)
    return Path(name).stem


def _encode(df: pl.DataFrame, col: str) -> tuple[np.ndarray, pl.Series]:
    """Integer codes (0..K-1, in order of first appearance) and the K original strings."""
    first_row = (
        df.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("i"), col)
        .select(pl.col("i").first().over(col))
        .to_series()
        .to_numpy()
    )
    # Compact the first-row indices to 0..K-1 in O(n): no sort needed, they already
    # ascend in order of first appearance.
    is_first = np.zeros(len(first_row), dtype=bool)
    is_first[first_row] = True
    code_of_row = np.cumsum(is_first, dtype=np.int64) - 1
    return code_of_row[first_row], df[col].gather(np.flatnonzero(is_first))


def _kcore(
    u: np.ndarray, i: np.ndarray, user_core: int, item_core: int
) -> tuple[np.ndarray, list[dict]]:
    """Surviving row indices (ascending = file order) and per-pass counts."""
    rows = np.arange(len(u), dtype=np.int64)
    passes: list[dict] = []
    while True:
        before = len(rows)
        uu = u[rows]
        rows = rows[np.bincount(uu)[uu] >= user_core]
        after_users = {"users": _count_unique(u[rows]), "interactions": int(len(rows))}
        ii = i[rows]
        rows = rows[np.bincount(ii, minlength=1)[ii] >= item_core] if len(rows) else rows
        passes.append(
            {
                "after_user_filter": after_users,
                "after_item_filter": {
                    "users": _count_unique(u[rows]),
                    "items": _count_unique(i[rows]),
                    "interactions": int(len(rows)),
                },
            }
        )
        if len(rows) == before or len(rows) == 0:
            return rows, passes


def _count_unique(x: np.ndarray) -> int:
    return int(np.count_nonzero(np.bincount(x))) if len(x) else 0


def _kcore_report(
    u: np.ndarray, i: np.ndarray, user_core: int, item_core: int, passes: list[dict]
) -> str:
    trace = "; ".join(
        f"pass {n}: users>={user_core} left {p['after_user_filter']['users']} users, "
        f"items>={item_core} left {p['after_item_filter']['items']} items"
        for n, p in enumerate(passes, start=1)
    )
    lower = []
    top = max(user_core, item_core)
    for k in sorted({top - 1, top // 2, 3, 2, 1} - {0}, reverse=True):  # a few, not all
        uk, ik = min(k, user_core), min(k, item_core)
        rows, _ = _kcore(u, i, uk, ik)
        if len(rows):
            lower.append(
                f"{uk}/{ik}-core would keep {_count_unique(u[rows])} users, "
                f"{_count_unique(i[rows])} items"
            )
            break
    hint = f" ({lower[0]})" if lower else ""
    return (
        f"k-core filtering (user_core={user_core}, item_core={item_core}) removed every "
        f"interaction: {trace}{hint}"
    )


def _first_appearance_ids(codes: np.ndarray) -> np.ndarray:
    """Renumber ``codes`` 1..K in order of first appearance in ``codes`` (O(n), no sort
    of the rows)."""
    n = len(codes)
    first = np.full(int(codes.max()) + 1, n, dtype=np.int64)
    np.minimum.at(first, codes, np.arange(n, dtype=np.int64))
    present = np.flatnonzero(first < n)
    rank = np.zeros(len(first), dtype=np.int64)
    rank[present[np.argsort(first[present])]] = np.arange(1, len(present) + 1)
    return rank[codes]


def _id_table(strings: pl.Series, codes: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """(K+1,) original-id strings indexed by new id, "" at 0."""
    code_of_id = np.zeros(int(ids.max()) + 1, dtype=np.int64)
    code_of_id[ids] = codes
    out = strings.gather(code_of_id[1:]).to_list()
    return np.asarray([""] + out, dtype=str)
