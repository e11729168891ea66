"""Exporting rows in original ids and reading them back, in every format."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models.data.errors import DataError, FormatError
from models.data.export import EXPORT_FORMATS, read_sequences, write_sequences
from models.data.preprocess import PreparedDataset, prepare
from models.data.sequences import RowSource, Sequences


@pytest.fixture(scope="module")
def dataset(tiny) -> PreparedDataset:
    return prepare(tiny.interactions)


def _mixed_rows(d: PreparedDataset):
    """Original rows plus a pattern row and a regenerated row without users."""
    train = d.split().train
    seqs = train.seqs.concat(Sequences.from_lists([[1, 2], [3, 1, 2]]))
    source = np.concatenate([train.source, [RowSource.PATTERN, RowSource.REGENERATED]])
    user = np.concatenate([train.user, [0, 0]])
    return seqs, source.astype(np.uint8), user


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_round_trip(tmp_path, dataset, fmt):
    seqs, source, user = _mixed_rows(dataset)
    path = write_sequences(tmp_path / f"rows.{fmt}", seqs, dataset, fmt, source=source, user=user)
    rows, labels = read_sequences(path, fmt)
    assert rows == [dataset.item_ids[s].tolist() for s in seqs]
    if fmt in ("inter", "txt"):
        assert labels is None
    else:
        assert labels == [RowSource(int(s)).label for s in source]
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left


def test_layouts(tmp_path, dataset):
    seqs, source, user = _mixed_rows(dataset)
    last_user = dataset.user_ids[user[-3]]
    for fmt in EXPORT_FORMATS:
        write_sequences(tmp_path / f"r.{fmt}", seqs, dataset, source=source, user=user)
    table = pq.read_table(tmp_path / "r.parquet")
    assert table.column_names == ["row", "user", "source", "items"]
    items_type = table.schema.field("items").type
    assert pa.types.is_list(items_type) and pa.types.is_string(items_type.value_type)
    assert table.column("row").to_pylist()[:2] == [1, 2]
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    assert json.loads(lines[-1]) == {"row": len(seqs), "user": "", "source": "regenerated",
                                     "items": dataset.item_ids[[3, 1, 2]].tolist()}  # fmt: skip
    assert json.loads(lines[-3])["user"] == last_user
    csv = (tmp_path / "r.csv").read_text().splitlines()
    assert csv[0] == "row,user,source,item,position"
    assert csv[1].startswith(f"1,{dataset.user_ids[1]},original,{dataset.item_ids[seqs[0][0]]},0")
    inter = (tmp_path / "r.inter").read_text().splitlines()
    assert inter[0] == "session_id:token\titem_id:token\ttimestamp:float"
    assert inter[1] == f"1\t{dataset.item_ids[seqs[0][0]]}\t0"
    txt = (tmp_path / "r.txt").read_text().splitlines()
    assert txt[-1] == f"{len(seqs)} " + " ".join(dataset.item_ids[[3, 1, 2]])
    assert len(txt) == len(seqs)


def test_defaults_are_original_rows_without_users(tmp_path, dataset):
    path = write_sequences(tmp_path / "all.jsonl", dataset.sequences, dataset)
    first = json.loads(path.read_text().splitlines()[0])
    assert first["source"] == "original" and first["user"] == ""


def test_many_rows_are_written_in_chunks(tmp_path, dataset, monkeypatch):
    import models.data.export as export

    monkeypatch.setattr(export, "_CHUNK_ROWS", 7)
    for fmt in EXPORT_FORMATS:
        path = write_sequences(tmp_path / f"c.{fmt}", dataset.sequences, dataset)
        rows, _ = read_sequences(path)
        assert rows == [dataset.item_ids[s].tolist() for s in dataset.sequences]
    assert (tmp_path / "c.csv").read_text().count("row,user") == 1


def test_invalid_rows(tmp_path, dataset):
    bad = Sequences.from_lists([[1, 2], [dataset.num_items + 1]])
    with pytest.raises(DataError, match=f"outside 1..{dataset.num_items}") as info:
        write_sequences(tmp_path / "x.csv", bad, dataset)
    assert info.value.line == 2
    with pytest.raises(DataError, match="empty sequence"):
        write_sequences(tmp_path / "x.csv", Sequences.from_lists([[1], []]), dataset)
    with pytest.raises(ValueError, match="choose one of"):
        write_sequences(tmp_path / "x.xlsx", dataset.sequences, dataset)
    with pytest.raises(ValueError, match="entries"):
        write_sequences(tmp_path / "x.csv", dataset.sequences, dataset, user=np.zeros(1))
    assert list(tmp_path.iterdir()) == []


def test_ids_with_whitespace_cannot_go_to_txt(tmp_path, dataset):
    spaced = PreparedDataset(
        "s", dataset.user_ids, np.array(["", "a b", "c"]), Sequences.from_lists([[1, 2]]), {}
    )
    with pytest.raises(FormatError, match="whitespace"):
        write_sequences(tmp_path / "s.txt", spaced.sequences, spaced)
    rows, _ = read_sequences(write_sequences(tmp_path / "s.parquet", spaced.sequences, spaced))
    assert rows == [["a b", "c"]]
