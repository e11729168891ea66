"""Counts on the real datasets in ../shared/data (skipped when absent)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from models.data.preprocess import prepare

pytestmark = pytest.mark.shared_data


@pytest.mark.parametrize(
    "name, users, items, interactions",
    [
        ("amazon-beauty.txt", 22_363, 12_101, 198_502),
        ("amazon-sports.txt", 35_598, 18_357, 296_337),
    ],
)
def test_amazon_five_core_is_a_no_op(shared_file, name, users, items, interactions):
    path = shared_file(name)
    d = prepare(path)
    s = d.stats
    assert (s["users"], s["items"], s["interactions"]) == (users, items, interactions)
    assert (s["users_before"], s["items_before"], s["interactions_before"]) == (
        users,
        items,
        interactions,
    )
    assert len(s["kcore_passes"]) == 1 and s["dropped_short_users"] == 0
    # Users keep the file's order and their line's item order.
    with open(path) as f:
        first = f.readline().split()
    assert d.user_ids[1] == first[0]
    assert d.item_ids[d.sequences[0]].tolist() == first[1:]


def test_ml100k_loads_with_real_timestamps(shared_file):
    path = shared_file("ml-100k.inter")
    d = prepare(path, user_core=5, item_core=5)
    assert d.num_users == 943 and d.stats["interactions_before"] == 100_000
    raw = pl.read_csv(path, separator="\t", infer_schema=False)
    raw.columns = [c.split(":")[0] for c in raw.columns]
    user = d.user_ids[1]
    times = raw.filter(pl.col("user_id") == user).with_columns(pl.col("timestamp").cast(pl.Float64))
    kept = set(d.item_ids[d.sequences[0]].tolist())
    stamps = (
        times.with_row_index("order").filter(pl.col("item_id").is_in(list(kept)))
        .sort("timestamp", "order")["item_id"].to_list()
    )  # fmt: skip
    assert d.item_ids[d.sequences[0]].tolist() == stamps
    assert np.all(times["timestamp"].to_numpy() > 8e8)  # epoch seconds from the late 1990s
