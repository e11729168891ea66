"""prepare(): k-core, id maps, chronological order, persistence (spec §1.2)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.data.errors import DataError, EmptyDataError, KCoreError, TooFewUsersError
from models.data.preprocess import PreparedDataset, prepare
from models.progress import Cancelled, ProgressEvent


def _frame(rows: list[tuple[str, str, float]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"], orient="row")


def _reference(rows, user_core: int, item_core: int):
    """Plain-Python spec §1.2: iterative k-core, drop users < 4, first-appearance ids,
    stable chronological sort."""
    while True:
        n = len(rows)
        users = Counter(r[0] for r in rows)
        rows = [r for r in rows if users[r[0]] >= user_core]
        items = Counter(r[1] for r in rows)
        rows = [r for r in rows if items[r[1]] >= item_core]
        if len(rows) == n:
            break
    users = Counter(r[0] for r in rows)
    rows = [r for r in rows if users[r[0]] >= 4]
    user_order = list(dict.fromkeys(r[0] for r in rows))
    item_order = list(dict.fromkeys(r[1] for r in rows))
    seqs = []
    for u in user_order:
        mine = [(r[2], k, r[1]) for k, r in enumerate(rows) if r[0] == u]
        seqs.append([item for _, _, item in sorted(mine)])
    return user_order, item_order, seqs


def _as_original(d: PreparedDataset) -> list[list[str]]:
    return [d.item_ids[s].tolist() for s in d.sequences]


interactions = st.lists(
    st.tuples(
        st.sampled_from([f"u{i}" for i in range(6)]),
        st.sampled_from([f"i{i}" for i in range(7)]),
        st.integers(0, 4).map(float),  # few distinct timestamps: many ties
    ),
    max_size=70,
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=interactions, user_core=st.integers(1, 5), item_core=st.integers(1, 5))
def test_matches_plain_python_reference(rows, user_core, item_core):
    if not rows:
        with pytest.raises(EmptyDataError):
            prepare(_frame([("a", "b", 0.0)]).clear(), user_core=user_core)
        return
    if len({r[0] for r in rows}) == 1:
        with pytest.raises(TooFewUsersError):
            prepare(_frame(rows))
        return
    users, items, seqs = _reference(rows, user_core, item_core)
    if not seqs:
        with pytest.raises(KCoreError):
            prepare(_frame(rows), user_core=user_core, item_core=item_core)
        return
    d = prepare(_frame(rows), user_core=user_core, item_core=item_core)
    assert d.user_ids.tolist() == ["", *users]
    assert d.item_ids.tolist() == ["", *items]
    assert _as_original(d) == seqs
    assert d.stats["users"] == len(users) and d.stats["items"] == len(items)
    assert d.stats["interactions"] == sum(map(len, seqs))
    assert d.stats["interactions_before"] == len(rows)
    assert d.sequences.items.min() >= 1 and d.sequences.items.max() == d.num_items


def test_ids_follow_first_appearance_in_the_filtered_table():
    rows = [
        ("ub", "x", 9.0),  # x is dropped by the 2-core below, so ub first appears later
        ("ua", "q", 1.0), ("ub", "p", 5.0), ("ua", "p", 2.0), ("ub", "q", 6.0),
        ("ua", "q", 3.0), ("ub", "p", 7.0), ("ua", "p", 4.0), ("ub", "q", 8.0),
    ]  # fmt: skip
    d = prepare(_frame(rows), user_core=2, item_core=2)
    assert d.user_ids.tolist() == ["", "ua", "ub"]
    assert d.item_ids.tolist() == ["", "q", "p"]
    assert d.sequences.to_lists() == [[1, 2, 1, 2], [2, 1, 2, 1]]
    assert d.stats["users_before"] == 2 and d.stats["items_before"] == 3


def test_short_users_are_dropped_and_counted():
    rows = [("u1", "a", float(k)) for k in range(4)] + [("u2", "b", 0.0), ("u2", "a", 1.0)]
    rows += [("u3", "b", float(k)) for k in range(5)]
    d = prepare(_frame(rows), user_core=1, item_core=1)
    assert d.user_ids.tolist() == ["", "u1", "u3"]
    assert d.stats["dropped_short_users"] == 1
    assert d.stats["interactions"] == 9


def test_ties_keep_file_order_and_duplicates_are_kept():
    rows = [
        ("u1", "c", 5.0),
        ("u1", "a", 1.0),
        ("u1", "b", 5.0),
        ("u1", "a", 5.0),
        ("u1", "a", 0.0),
    ]
    rows += [("u2", "z", 1.0)] * 4
    d = prepare(_frame(rows), user_core=1, item_core=1)
    assert _as_original(d)[0] == ["a", "a", "c", "b", "a"]
    assert _as_original(d)[1] == ["z"] * 4


def test_kcore_error_reports_each_pass():
    rows = [(f"u{k % 3}", f"i{k}", float(k)) for k in range(12)]
    with pytest.raises(KCoreError) as info:
        prepare(_frame(rows), user_core=2, item_core=2, name="tiny")
    msg = str(info.value)
    assert msg.startswith("tiny: k-core filtering (user_core=2, item_core=2)")
    assert "pass 1: users>=2 left 3 users, items>=2 left 0 items" in msg
    assert "1/1-core would keep 3 users, 12 items" in msg


def test_users_too_short_for_a_split_are_dropped_or_rejected():
    rows = [("u1", "a", 1.0), ("u1", "b", 2.0), ("u2", "a", 1.0)]
    with pytest.raises(KCoreError, match="fewer than 4"):
        prepare(_frame(rows), user_core=1, item_core=1)


def test_stats_and_split(tiny):
    d = prepare(tiny.interactions, max_len=10)
    s = d.stats
    assert s["users"] == d.num_users == len(d.sequences)
    assert s["items"] == d.num_items
    assert s["interactions"] == len(d.sequences.items)
    assert s["mean_length"] == pytest.approx(len(d.sequences.items) / d.num_users)
    assert s["density"] == pytest.approx(s["interactions"] / (s["users"] * s["items"]))
    assert s["interactions_before"] == len(tiny.interactions)
    split = d.split()
    assert split.stats["max_len"] == 10
    assert split.train.seqs.lengths.max() <= 8
    assert d.split(max_len=50).stats["max_len"] == 50


def test_prepare_reads_files_with_reader_options(tmp_path):
    path = tmp_path / "log.csv"
    rows = [(f"u{u}", f"i{(u + k) % 5}", float(k)) for u in range(6) for k in range(5)]
    pl.DataFrame(rows, schema=["who", "what", "when"], orient="row").write_csv(path, separator=";")
    d = prepare(path, user_col="who", item_col="what", time_col="when", delimiter=";")
    assert d.name == "log" and d.num_users == 6 and d.num_items == 5
    assert _as_original(d)[0] == ["i0", "i1", "i2", "i3", "i4"]


def test_save_load_round_trip_and_atomic_replace(tmp_path, tiny):
    d = prepare(tiny.interactions, name="tiny")
    out = tmp_path / "prepared"
    d.save(out)
    back = PreparedDataset.load(out)
    assert back.name == "tiny"
    assert back.user_ids.tolist() == d.user_ids.tolist()
    assert back.item_ids.tolist() == d.item_ids.tolist()
    assert np.array_equal(back.sequences.items, d.sequences.items)
    assert np.array_equal(back.sequences.offsets, d.sequences.offsets)
    assert back.stats == d.stats
    # Saving again over it replaces the folder and leaves no temp folders behind.
    other = prepare(tiny.interactions, user_core=6, item_core=6, name="tiny6")
    other.save(out)
    assert PreparedDataset.load(out).name == "tiny6"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]
    with np.load(out / "sequences.npz", allow_pickle=False) as npz:
        assert set(npz.files) == {"items", "offsets"}


def test_load_rejects_incomplete_directories(tmp_path, tiny):
    with pytest.raises(DataError, match="missing sequences.npz"):
        PreparedDataset.load(tmp_path)
    d = prepare(tiny.interactions)
    d.save(tmp_path / "p")
    (tmp_path / "p" / "users.parquet").unlink()
    with pytest.raises(DataError, match="users.parquet"):
        PreparedDataset.load(tmp_path / "p")


def test_progress_events_and_cancellation(tiny):
    events: list[ProgressEvent] = []
    prepare(tiny.interactions, progress=events.append)
    assert [e.done for e in events] == [1, 2, 3, 4]
    assert {e.stage for e in events} == {"prepare"} and events[-1].fraction == 1.0

    def cancel(event: ProgressEvent) -> None:
        if event.done == 2:
            raise Cancelled()

    with pytest.raises(Cancelled):
        prepare(tiny.interactions, progress=cancel)


def test_bad_arguments(tiny):
    with pytest.raises(ValueError, match="at least 1"):
        prepare(tiny.interactions, user_core=0)
    with pytest.raises(ValueError, match="max_len"):
        prepare(tiny.interactions, max_len=3)
