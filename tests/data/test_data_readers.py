"""Reading every supported format into the canonical interaction frame."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest

from models.data.readers import frame_to_interactions, read_interactions
from models.data.synthetic import write

CANONICAL = {"user": pl.String, "item": pl.String, "timestamp": pl.Float64, "order": pl.UInt64}


def _per_user(df: pl.DataFrame) -> dict[str, list[str]]:
    """Chronological item lists per user (ties in file order)."""
    ordered = df.sort(["user", "timestamp", "order"])
    return {u: g["item"].to_list() for (u,), g in ordered.group_by("user", maintain_order=True)}


@pytest.mark.parametrize(
    "name",
    ["d.csv", "d.tsv", "d.jsonl", "d.parquet", "d.inter", "d.txt"]
    + ["d.csv.gz", "d.tsv.gz", "d.jsonl.gz", "d.inter.gz", "d.txt.gz"],
)
def test_every_format_round_trips(tmp_path, tiny, name):
    path = write(tmp_path / name, tiny)
    if name.endswith(".gz"):
        assert path.read_bytes()[:2] == b"\x1f\x8b"
    df = read_interactions(path)
    assert dict(df.schema) == CANONICAL
    assert df["order"].to_list() == list(range(len(df)))
    expected = tiny.interactions
    assert len(df) == len(expected)
    assert _per_user(df) == _per_user(
        expected.rename({"user_id": "user", "item_id": "item"}).with_columns(
            pl.col("timestamp").cast(pl.Float64), order=pl.int_range(pl.len())
        )
    )
    if not name.startswith("d.txt"):  # txt keeps positions, the others real timestamps
        assert df["user"].to_list() == expected["user_id"].to_list()
        assert df["timestamp"].to_list() == expected["timestamp"].cast(pl.Float64).to_list()


def test_txt_timestamps_are_positions(write_file):
    df = read_interactions(write_file("s.txt", "7 a b c\n\n8 d  e\n9\n"))
    assert df.rows() == [
        ("7", "a", 0.0, 0), ("7", "b", 1.0, 1), ("7", "c", 2.0, 2),
        ("8", "d", 0.0, 3), ("8", "e", 1.0, 4),
    ]  # fmt: skip


@pytest.mark.parametrize(
    "content, header",
    [
        ("user_id,item_id,timestamp\nu1,i1,10\nu2,i2,20\nu1,i3,30\n", True),
        ("u1,i1,10\nu2,i2,20\nu1,i3,30\n", False),
        ("u1,i1,5.0,10\nu2,i2,4.0,20\nu1,i3,3.0,30\n", False),
        ("user_id,item_id,rating,timestamp\nu1,i1,5,10\nu2,i2,4,20\nu1,i3,3,30\n", True),
    ],
)
def test_header_is_sniffed(write_file, content, header):
    df = read_interactions(write_file("h.csv", content))
    assert df.select("user", "item", "timestamp").rows() == [
        ("u1", "i1", 10.0), ("u2", "i2", 20.0), ("u1", "i3", 30.0),
    ]  # fmt: skip


def test_header_sniffed_from_value_types_and_override(write_file):
    path = write_file("h.csv", "who,what,when\nu1,i1,10\nu2,i2,20\n")
    # A header with unexpected names is recognised (and the error names them) ...
    with pytest.raises(Exception, match="found 'who', 'what', 'when'"):
        read_interactions(path)
    df = read_interactions(path, user_col="who", item_col="what", time_col="when")
    assert df["user"].to_list() == ["u1", "u2"]
    # ... and has_header=False forces the first line to be data.
    numeric = write_file("n.csv", "1,2,3\n4,5,6\n7,8,9\n")
    assert len(read_interactions(numeric, has_header=False)) == 3
    headed = read_interactions(numeric, has_header=True, user_col="1", item_col="2", time_col="3")
    assert headed["user"].to_list() == ["4", "7"]


def test_column_mapping_by_name_and_position(write_file):
    content = "ts;rating;item;uid\n100;5;a;x\n50;4;b;y\n70;3;c;x\n"
    by_name = read_interactions(
        write_file("m.csv", content), delimiter=";", user_col="uid", item_col="item", time_col="ts",
        rating_col="rating",
    )  # fmt: skip
    assert by_name.rows() == [
        ("x", "a", 100.0, 0, 5.0), ("y", "b", 50.0, 1, 4.0), ("x", "c", 70.0, 2, 3.0),
    ]  # fmt: skip
    by_pos = read_interactions(
        write_file("m.csv", content), delimiter=";", user_col=3, item_col=2, time_col=0
    )
    assert by_pos.rows() == by_name.drop("rating").rows()


def test_time_col_none_uses_file_order(write_file):
    df = read_interactions(write_file("p.csv", "u1,a\nu2,b\nu1,c\n"), time_col=None)
    assert df["timestamp"].to_list() == [0.0, 1.0, 2.0]


def test_iso_timestamps(write_file):
    content = (
        "user_id,item_id,timestamp\n"
        "u1,a,2020-01-01\n"
        "u1,b,2020-01-01T10:00:00Z\n"
        "u2,c,2020-01-01 10:00:00+02:00\n"
        "u2,d,2020-01-01T10:00:00.500\n"
        "u2,e,1577872800\n"
    )
    df = read_interactions(write_file("iso.csv", content))
    expect = [
        datetime(2020, 1, 1, tzinfo=UTC),
        datetime(2020, 1, 1, 10, tzinfo=UTC),
        datetime(2020, 1, 1, 8, tzinfo=UTC),
        datetime(2020, 1, 1, 10, 0, 0, 500000, tzinfo=UTC),
        datetime(2020, 1, 1, 10, tzinfo=UTC),
    ]
    assert df["timestamp"].to_list() == [d.timestamp() for d in expect]


@pytest.mark.parametrize(
    "content, fmt",
    [
        ("u1,i1,1\nu2,i2,2\n", "csv"),
        ("u1\ti1\t1\nu2\ti2\t2\n", "tsv"),
        (
            '{"user_id": "u1", "item_id": "i1", "timestamp": 1}\n{"user_id": "u2", "item_id": "i2", "timestamp": 2}\n',
            "jsonl",
        ),
        ("user_id:token\titem_id:token\ttimestamp:float\nu1\ti1\t1\nu2\ti2\t2\n", "inter"),
        ("u1 i1\nu2 i2\n", "txt"),
    ],
)
def test_format_sniffed_without_extension(write_file, content, fmt):
    df = read_interactions(write_file("data.bin", content))
    assert df.select("user", "item").rows() == [("u1", "i1"), ("u2", "i2")]
    gz = read_interactions(write_file("data2", gzip.compress(content.encode())))
    assert gz.equals(df)


def test_format_override_and_parquet_sniffed(tmp_path, write_file):
    df = read_interactions(write_file("x.dat", "a b c\nd e\n"), format="txt")
    assert len(df) == 3
    path = tmp_path / "blob"
    pl.DataFrame({"user_id": [1, 2], "item_id": [3, 4], "timestamp": [5, 6]}).write_parquet(path)
    assert read_interactions(path).select("user", "item").rows() == [("1", "3"), ("2", "4")]


def test_frames_with_typed_columns():
    stamps = [datetime(2021, 5, 1, tzinfo=UTC), datetime(2021, 5, 2, tzinfo=UTC)]
    df = frame_to_interactions(
        pl.DataFrame({"user_id": [1, 2], "item_id": [10, 20], "timestamp": stamps})
    )
    assert df.rows() == [
        ("1", "10", stamps[0].timestamp(), 0),
        ("2", "20", stamps[1].timestamp(), 1),
    ]
    dates = frame_to_interactions(
        pl.DataFrame({"u": ["a", "b"], "i": ["x", "y"], "t": [datetime(1970, 1, 2).date()] * 2}),
        user_col="u", item_col="i", time_col="t",
    )  # fmt: skip
    assert dates["timestamp"].to_list() == [86400.0, 86400.0]


def test_canonical_frame_is_accepted_in_its_order():
    frame = pl.DataFrame(
        {"user": ["b", "a", "a"], "item": ["y", "x", "z"], "timestamp": [1.0, 1.0, 2.0],
         "order": np.array([2, 0, 1], dtype=np.uint64)}
    )  # fmt: skip
    df = frame_to_interactions(frame)
    assert df.select("user", "item").rows() == [("a", "x"), ("a", "z"), ("b", "y")]


def test_bom_and_crlf(write_file):
    df = read_interactions(
        write_file("w.csv", "\ufeffuser_id,item_id,timestamp\r\nu1,a,1\r\nu2,b,2\r\n\r\n")
    )
    assert df.select("user", "item", "timestamp").rows() == [("u1", "a", 1.0), ("u2", "b", 2.0)]
