"""Bad input against the running API: upload limits enforced while
streaming, wrong content types, malformed files of every format, gzip bombs,
long lines, non-UTF-8 bytes, logs that k-core filtering empties, and job
parameters out of range. Every refusal has the documented error shape and
stores nothing."""

from __future__ import annotations

import gzip
import io
import json
import socket
import zipfile
from pathlib import Path

import polars as pl
import pytest
from reliability_harness import MAX_LINE, MAX_UPLOAD, Service, files_under
from service_harness import assert_error

from app.errors import ApiError
from app.upload_checks import ContentLimits, check_upload

pytestmark = pytest.mark.service

GOOD = [f"u{u},i{(u * 7 + t * 3) % 12},{1000 + t}" for u in range(30) for t in range(8)]
CSV = ["user_id,item_id,timestamp", *GOOD]


def _replace(lines: list[str], index: int, line: str) -> list[str]:
    out = list(lines)
    out[index] = line
    return out


def _text(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def _jsonl(lines: list[str]) -> list[str]:
    rows = (line.split(",") for line in lines)
    return [json.dumps({"user_id": u, "item_id": i, "timestamp": int(t)}) for u, i, t in rows]


def _parquet(**columns) -> bytes:
    buf = io.BytesIO()
    pl.DataFrame(columns).write_parquet(buf)
    return buf.getvalue()


TXT = [f"u{u} " + " ".join(f"i{(u * 7 + t * 3) % 12}" for t in range(8)) for u in range(30)]
INTER = ["user_id:token\titem_id:token\ttimestamp:float", *(g.replace(",", "\t") for g in GOOD)]

# (file name, bytes, expected 422 message fragment naming the place)
MALFORMED = [
    ("ratings.csv", _text(_replace(CSV, 5, "u1,i2,yesterday")), "line 6, column 'timestamp'"),
    ("ratings.csv", _text(_replace(CSV, 5, "u1,i2,3,4,5")), "line 6: 5 fields"),
    (
        "ratings.tsv",
        _text([c.replace(",", "\t") for c in _replace(CSV, 9, "u1,i2,nope")]),
        "line 10, column 'timestamp'",
    ),
    ("events.jsonl", _text(_replace(_jsonl(GOOD), 3, '{"user_id": "u1", "item_id": ')), "line 4"),
    ("events.jsonl", _text(_replace(_jsonl(GOOD), 7, "[1, 2, 3]")), "line 8"),
    ("log.inter", _text(_replace(INTER, 4, "u1\ti1\tabc")), "line 5, column 'timestamp'"),
    ("seqs.txt", _text(TXT).replace(b"u9 i", b"u9 \xc3\x28i"), "line 10: invalid UTF-8"),
    (
        "log.parquet",
        _parquet(user_id=["u1"] * 10, item_id=[None] * 10, timestamp=list(range(10))),
        "row 1, column 'item_id'",
    ),
    ("log.parquet", _parquet(user_id=["u1"] * 10)[:-30], "unreadable Parquet file"),
    (
        "latin1.csv",
        _text(_replace(CSV, 7, "u1,i\xff\xfe,3")).replace(b"\xc3\xbf\xc3\xbe", b"\xff\xfe"),
        "line 8, column 'item_id': invalid UTF-8",
    ),
    ("nul.csv", b"user_id,item_id,timestamp\nu1,i1,1\x00\n", "binary data"),
    ("header-only.csv", b"user_id,item_id,timestamp\n", "no interactions"),
    (
        "sparse.csv",
        _text(["user_id,item_id,timestamp", *(f"u{i},i{i},{i}" for i in range(50))]),
        "k-core filtering",
    ),
    (
        "long.csv",
        _text([*CSV[:10], "u1," + "x" * (MAX_LINE + 10) + ",1"]),
        f"line 11: longer than {MAX_LINE} bytes",
    ),
    ("mac.csv", "\r".join(CSV * 25).encode(), f"line 1: longer than {MAX_LINE} bytes"),
    (
        "bad.csv.gz",
        gzip.compress(_text(_replace(CSV, 5, "u1,i2,yesterday"))),
        "line 6, column 'timestamp'",
    ),
    ("cut.csv.gz", gzip.compress(_text(CSV))[:-12], "truncated gzip data"),
    ("noise.csv.gz", b"\x1f\x8b" + bytes(range(256)) * 4, "corrupt gzip data"),
]


@pytest.fixture(scope="module")
def client(api_service: Service):
    api_service.add_key("ivan")
    with api_service.client("ivan") as c:
        yield c


def _nothing_stored(api_service: Service, client, before: tuple[int, list[str]]) -> None:
    assert (client.get("/datasets").json()["total"], files_under(api_service.store_dir)) == before
    assert not list((api_service.data_dir / "work" / "uploads").glob("upload-*"))


def _state(api_service: Service, client) -> tuple[int, list[str]]:
    return client.get("/datasets").json()["total"], files_under(api_service.store_dir)


@pytest.mark.parametrize(
    ("name", "data", "where"), MALFORMED, ids=[f"{i}-{m[0]}" for i, m in enumerate(MALFORMED)]
)
def test_malformed_files_are_422_naming_the_place(
    api_service: Service, client, name, data, where
) -> None:
    before = _state(api_service, client)
    err = assert_error(client.post("/datasets", files={"file": (name, data)}), 422, "invalid_data")
    assert where in err["message"] and err["message"].startswith(name), err
    assert err["field"] == "file" or err["field"].startswith("file."), err
    _nothing_stored(api_service, client, before)


def test_gzip_bomb_is_refused_while_decompressing(api_service: Service, client) -> None:
    bomb = gzip.compress(
        b"u1,i1,1\n" * (64 * 1024 * 1024 // 8), compresslevel=9
    )  # 64 MiB -> ~64 kB
    before = _state(api_service, client)
    err = assert_error(
        client.post("/datasets", files={"file": ("x.csv.gz", bomb)}), 413, "too_large"
    )
    assert "decompression bomb" in err["message"] and err["field"] == "file"
    _nothing_stored(api_service, client, before)


def test_decompressed_size_limit(tmp_path: Path) -> None:
    """The absolute cap (the ratio cap needs over 16 MiB, the end-to-end test above)."""
    limits = ContentLimits(max_decompressed_bytes=1_000_000, max_ratio=1e9, max_line_bytes=1 << 20)
    path = tmp_path / "big.csv.gz"
    path.write_bytes(gzip.compress(_text(CSV * 1000)))  # ~3 MB once expanded
    with pytest.raises(ApiError, match="expands beyond the limit of 1000000 bytes") as info:
        check_upload(path, limits, "big.csv.gz")
    assert info.value.status == 413
    path.write_bytes(gzip.compress(_text(CSV * 30)))
    check_upload(path, limits, "ok.csv.gz")  # below it: accepted


def test_zip_and_wrong_content_types_are_415(api_service: Service, client) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("ratings.csv", _text(CSV))
    before = _state(api_service, client)
    err = assert_error(client.post("/datasets", files={"file": ("r.zip", buf.getvalue())}), 415)
    assert "zip" in err["message"] and err["field"] == "file"
    for ctype, body in (
        ("text/csv", _text(CSV)),
        ("application/json", b"{}"),
        ("multipart/form-data", b"x"),
    ):
        err = assert_error(
            client.post("/datasets", content=body, headers={"Content-Type": ctype}),
            415,
            "unsupported_media_type",
        )
        assert err["field"] == "file"
    _nothing_stored(api_service, client, before)


def _raw_post(api_service: Service, key: str, headers: dict[str, str], body: bytes) -> bytes:
    """POST with a hand-written request: send ``body`` (only part of what the
    headers announce) and read the answer without sending the rest."""
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = (
        f"POST /datasets HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n{head}\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", api_service.port), timeout=20) as s:
        s.sendall(request)
        try:
            s.sendall(body)
        except OSError:  # the server may answer and close while we are still sending
            pass
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
        return reply


def test_oversize_is_413_before_the_whole_body_is_read(api_service: Service, client) -> None:
    key = api_service.keys["ivan"]
    boundary = "b0undary"
    part = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.csv"\r\n'
        "Content-Type: text/csv\r\n\r\n"
    ).encode()
    before = _state(api_service, client)
    # Announced too large: refused on the headers, after 1 kB of a 20 MB body.
    reply = _raw_post(
        api_service,
        key,
        {
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Length": str(10 * MAX_UPLOAD),
        },
        part + b"u1,i1,1\n" * 128,
    )
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    # Chunked, no length: refused once the limit is crossed, body still open.
    data = part + b"u1,i1,1\n" * (MAX_UPLOAD // 8 + 2048)
    chunked = b"".join(
        f"{len(data[i : i + 65536]):x}\r\n".encode() + data[i : i + 65536] + b"\r\n"
        for i in range(0, len(data), 65536)
    )  # no terminating chunk: the upload never finishes
    reply = _raw_post(
        api_service,
        key,
        {
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Transfer-Encoding": "chunked",
        },
        chunked,
    )
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    body = client.get("/datasets")  # the server is fine afterwards
    assert body.status_code == 200
    _nothing_stored(api_service, client, before)


def _ready_dataset(client) -> str:
    r = client.post("/datasets", files={"file": ("ok.csv", _text(CSV))})
    assert r.status_code == 201, r.text
    return r.json()["id"]


REGEN_BAD = [
    ({"alpha": 1}, "parameters.alpha"),
    ({"alpha": 11}, "parameters.alpha"),
    ({"alpha": "5"}, "parameters.alpha"),
    ({"alpha": 5.5}, "parameters.alpha"),
    ({"beta": 1}, "parameters.beta"),
    ({"beta": -3}, "parameters.beta"),
    ({"k_memories": 0}, "parameters.k_memories"),
    ({"k_memories": 65}, "parameters.k_memories"),
    ({"regenerator_epochs": 0}, "parameters.regenerator_epochs"),
    ({"regenerator_epochs": 1001}, "parameters.regenerator_epochs"),
    ({"pretrain_epochs": -1}, "parameters.pretrain_epochs"),
    ({"device": "tpu"}, "parameters.device"),
    ({"colour": "blue"}, "parameters.colour"),
    ({"regenerator": {"no_such_knob": 1}}, "parameters.regenerator.no_such_knob"),
]
TRAIN_BAD = [
    ({"model": "bert4rec"}, "model"),
    ({"parameters": {"epochs": 0}}, "parameters.epochs"),
    ({"parameters": {"epochs": 1001}}, "parameters.epochs"),
    ({"parameters": {"epochs": -5}}, "parameters.epochs"),
    ({"parameters": {"lr": 0}}, "parameters.lr"),
    ({"parameters": {"batch_size": 0}}, "parameters.batch_size"),
    ({"parameters": {"model": "gru4rec"}}, "parameters.model"),
    ({"data": "synthetic"}, "data"),
    ({"personalize": "maybe"}, "personalize"),
    ({"unknown_field": 1}, "unknown_field"),
]


def test_out_of_range_parameters_are_422_naming_the_field(client) -> None:
    ds = _ready_dataset(client)
    jobs_before = client.get("/jobs").json()["total"]
    for params, field in REGEN_BAD:
        r = client.post("/jobs/regenerate", json={"dataset_id": ds, "parameters": params})
        assert assert_error(r, 422, "invalid")["field"] == field, (params, r.text)
    for body, field in TRAIN_BAD:
        r = client.post("/jobs/train", json={"dataset_id": ds, **body})
        assert assert_error(r, 422, "invalid")["field"] == field, (body, r.text)
    for body, field in (
        ({"models": ["sasrec", "bert4rec"], "variants": ["original"]}, "models[1]"),
        ({"models": [], "variants": ["original"]}, "models"),
        ({"models": ["sasrec"], "variants": ["dr5sr"]}, "variants[0]"),
        (
            {"models": ["sasrec"], "variants": ["original"], "parameters": {"epochs": 0}},
            "parameters.epochs",
        ),
    ):
        r = client.post("/jobs/compare", json={"dataset_id": ds, **body})
        assert assert_error(r, 422, "invalid")["field"] == field, (body, r.text)
    for params in ({"limit": 0}, {"limit": 501}, {"offset": -1}, {"state": "paused"}):
        r = client.get("/jobs", params=params)
        assert assert_error(r, 422, "invalid")["field"] == next(iter(params)), r.text
    assert client.get("/jobs").json()["total"] == jobs_before  # nothing was queued


def test_uploads_orphaned_by_a_killed_api_are_cleaned_at_start(tmp_path: Path) -> None:
    import os
    import time

    from app.main import remove_stale_uploads

    old, fresh, other = tmp_path / "upload-old", tmp_path / "upload-new", tmp_path / "keep.csv"
    for p in (old, fresh, other):
        p.write_bytes(b"x")
    hour_ago = time.time() - 2 * 3600
    os.utime(old, (hour_ago, hour_ago))
    os.utime(other, (hour_ago, hour_ago))
    assert remove_stale_uploads(tmp_path) == 1
    assert not old.exists() and fresh.exists() and other.exists()
