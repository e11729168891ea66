"""Every kind of bad input raises a typed DataError naming file, line and column."""

from __future__ import annotations

import gzip
import pickle

import polars as pl
import pytest

from models.data.errors import (
    ColumnError,
    DataError,
    EmptyDataError,
    EncodingError,
    FormatError,
    TimestampError,
    TooFewUsersError,
)
from models.data.readers import frame_to_interactions, read_interactions

HEADER = "user_id,item_id,timestamp\n"


def _error(path, cls, **kwargs) -> DataError:
    with pytest.raises(cls) as info:
        read_interactions(path, **kwargs)
    assert isinstance(info.value, DataError) and isinstance(info.value, ValueError)
    assert info.value.file == path.name
    return info.value


def test_message_format_and_pickling():
    err = TimestampError(
        "cannot parse 'yesterday' as a timestamp",
        file="/x/ratings.csv",
        line=17,
        column="timestamp",
    )
    assert (
        str(err)
        == "ratings.csv line 17, column 'timestamp': cannot parse 'yesterday' as a timestamp"
    )
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is TimestampError and str(back) == str(err) and back.line == 17
    assert str(DataError("plain")) == "plain"
    assert str(ColumnError("bad", line=3, unit="row")) == "row 3: bad"


def test_unparsable_timestamp_names_line_and_column(write_file):
    path = write_file("ratings.csv", HEADER + "u1,a,1\n\nu1,b,2\nu2,c,yesterday\n")
    err = _error(path, TimestampError)
    assert (err.line, err.column) == (5, "timestamp")  # the blank line 3 still counts
    assert str(err).startswith("ratings.csv line 5, column 'timestamp': cannot parse 'yesterday'")


def test_missing_timestamp_value(write_file):
    err = _error(write_file("r.csv", HEADER + "u1,a,1\nu2,b\n"), TimestampError)
    assert (err.line, err.column) == (3, "timestamp")
    assert "missing timestamp" in err.message


def test_nan_timestamp_is_rejected(write_file):
    err = _error(write_file("r.csv", HEADER + "u1,a,1\nu2,b,nan\n"), TimestampError)
    assert err.line == 3


def test_no_header_timestamp_error_hints_at_header(write_file):
    path = write_file("r.csv", "uid,iid,time\nu1,a,1\nu2,b,2\n")
    err = _error(path, TimestampError, has_header=False)
    assert err.line == 1 and "header" in err.message


def test_missing_columns_lists_what_was_found(write_file):
    err = _error(write_file("r.csv", "uid,item_id,time\nu1,a,1\nu2,b,2\n"), ColumnError)
    assert "'user_id'" in err.message and "'timestamp'" in err.message
    assert "found 'uid', 'item_id', 'time'" in err.message


def test_missing_key_in_jsonl(write_file):
    path = write_file("r.jsonl", '{"user": "u1", "item_id": "a", "timestamp": 1}\n')
    err = _error(path, ColumnError)
    assert "'user_id'" in err.message and "found 'user', 'item_id', 'timestamp'" in err.message


def test_empty_id_value(write_file):
    err = _error(write_file("r.csv", HEADER + "u1,a,1\nu2,,2\n"), ColumnError)
    assert (err.line, err.column) == (3, "item_id")


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "the file is empty"),
        (b"  \n\n \t\n", "only whitespace"),
        (HEADER.encode(), "no interactions"),
        (gzip.compress(b""), "empty"),
    ],
)
def test_empty_inputs(write_file, content, message):
    err = _error(write_file("e.csv", content), EmptyDataError)
    assert message in err.message


def test_binary_garbage(write_file):
    garbage = bytes(range(256)) * 20
    assert "binary" in _error(write_file("g.csv", garbage), FormatError).message
    assert "binary" in _error(write_file("g.unknown", garbage), FormatError).message
    assert "Parquet" in _error(write_file("g.parquet", b"not parquet at all"), FormatError).message
    assert "gzip" in _error(write_file("g.csv.gz", b"\x1f\x8b" + garbage), FormatError).message


def test_parquet_bytes_under_a_csv_name(tmp_path):
    path = tmp_path / "really.csv"
    pl.DataFrame({"user_id": ["a", "b"], "item_id": ["x", "y"], "timestamp": [1, 2]}).write_parquet(
        path
    )
    assert "use format 'parquet'" in _error(path, FormatError).message


def test_nul_byte_inside_text(write_file):
    err = _error(
        write_file("n.csv", b"user_id,item_id,timestamp\nu1,a,1\n" * 50 + b"u2,\x00,2\n"),
        FormatError,
    )
    assert err.line == 101


def test_utf16_is_named(write_file):
    err = _error(write_file("w.csv", (HEADER + "u1,a,1\n").encode("utf-16")), EncodingError)
    assert "UTF-16" in err.message


def test_wrong_delimiter_is_named(write_file):
    err = _error(write_file("semi.csv", "user_id;item_id;timestamp\nu1;a;1\nu2;b;2\n"), FormatError)
    assert err.line == 1
    assert "single column" in err.message and "delimiter=';'" in err.message
    ok = read_interactions(
        write_file("semi.csv", "user_id;item_id;timestamp\nu1;a;1\nu2;b;2\n"), delimiter=";"
    )
    assert len(ok) == 2


def test_single_user(write_file):
    err = _error(write_file("one.csv", HEADER + "u1,a,1\nu1,b,2\nu1,c,3\n"), TooFewUsersError)
    assert err.column == "user_id" and "single user 'u1'" in err.message


def test_non_utf8_names_line_and_column(write_file):
    content = (HEADER + "u1,a,1\nu2,caf").encode() + b"\xe9" + b",2\n"
    err = _error(write_file("latin1.csv", content), EncodingError)
    assert (err.line, err.column) == (3, "item_id")
    assert "UTF-8" in err.message


def test_non_utf8_in_a_sequence_file(write_file):
    err = _error(write_file("s.txt", b"1 a b\n2 c \xff d\n"), EncodingError)
    assert err.line == 2


def test_extra_fields_on_a_line(write_file):
    err = _error(write_file("r.csv", HEADER + "u1,a,1\nu2,b,2\nu2,c,3,4\n"), FormatError)
    assert err.line == 4 and "4 fields" in err.message


def test_invalid_json_line(write_file):
    content = (
        '{"user_id": "u1", "item_id": "a", "timestamp": 1}\n\n{"user_id": "u2" "item_id": 1}\n'
    )
    err = _error(write_file("r.jsonl", content), FormatError)
    assert err.line == 3 and "invalid JSON" in err.message


def test_jsonl_bad_timestamp_skips_blank_lines_in_line_count(write_file):
    content = (
        '{"user_id": "u1", "item_id": "a", "timestamp": 1}\n\n\n'
        '{"user_id": "u2", "item_id": "b", "timestamp": "soon"}\n'
    )
    err = _error(write_file("r.jsonl", content), TimestampError)
    assert (err.line, err.column) == (4, "timestamp")


def test_sequence_file_problems(write_file):
    dup = _error(write_file("d.txt", "1 a b\n2 c\n1 d\n"), FormatError)
    assert dup.line == 3 and "lines 1 and 3" in dup.message
    commas = _error(write_file("c.txt", "1,a,3\n2,b,4\n"), FormatError)
    assert "format 'csv'" in commas.message


def test_parquet_errors_name_rows(tmp_path):
    path = tmp_path / "p.parquet"
    pl.DataFrame(
        {"user_id": ["a", "b", "c"], "item_id": ["x", "y", "z"], "timestamp": ["1", "2", "later"]}
    ).write_parquet(path)
    err = _error(path, TimestampError)
    assert (err.unit, err.line, err.column) == ("row", 3, "timestamp")
    assert str(err).startswith("p.parquet row 3, column 'timestamp'")


def test_frame_errors_name_rows():
    with pytest.raises(ColumnError) as info:
        frame_to_interactions(
            pl.DataFrame({"user_id": ["a", None], "item_id": ["x", "y"], "timestamp": [1, 2]})
        )
    assert (info.value.unit, info.value.line, info.value.column) == ("row", 2, "user_id")


def test_bad_arguments(write_file, tmp_path):
    path = write_file("ok.csv", HEADER + "u1,a,1\nu2,b,2\n")
    with pytest.raises(ValueError, match="unknown format"):
        read_interactions(path, format="xlsx")
    with pytest.raises(ValueError, match="single character"):
        read_interactions(path, delimiter=";;")
    with pytest.raises(FileNotFoundError):
        read_interactions(tmp_path / "nope.csv")
    with pytest.raises(ColumnError, match="out of range"):
        read_interactions(path, user_col=7)


def test_no_header_with_two_columns_needs_time_col_none(write_file):
    path = write_file("two.csv", "u1,a\nu2,b\n")
    assert "time_col=None" in _error(path, ColumnError).message
    assert len(read_interactions(path, time_col=None)) == 2
