"""ArtifactStore on a local folder and on an fsspec in-memory filesystem."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from app.core.storage import ArtifactStore, StorageError, file_digest


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return ArtifactStore(str(tmp_path / "artifacts"))
    return ArtifactStore(f"memory://dr4sr-test-{uuid.uuid4().hex}")


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_put_file_reports_size_and_digest_and_overwrites(
    store: ArtifactStore, tmp_path: Path
) -> None:
    src = _write(tmp_path / "a.bin", b"x" * 3000)
    obj = store.put_file(src, "jobs/1/output/a.bin")
    assert (obj.size, obj.sha256) == file_digest(src)
    assert b"".join(store.iter_bytes("jobs/1/output/a.bin", 1000)) == b"x" * 3000
    store.put_file(_write(tmp_path / "b.bin", b"new"), "jobs/1/output/a.bin")
    assert store.open("jobs/1/output/a.bin").read() == b"new"
    assert store.list("jobs/1") == ["jobs/1/output/a.bin"]  # no temp names left behind


def test_put_dir_replaces_the_whole_prefix(store: ArtifactStore, tmp_path: Path) -> None:
    first = tmp_path / "first"
    _write(first / "model.safetensors", b"w1")
    _write(first / "regenerator" / "config.json", b"{}")
    stored = store.put_dir(first, "jobs/9/output")
    assert sorted(o.key for o in stored) == [
        "jobs/9/output/model.safetensors",
        "jobs/9/output/regenerator/config.json",
    ]
    second = tmp_path / "second"
    _write(second / "model.safetensors", b"w2")
    store.put_dir(second, "jobs/9/output")
    # a rerun leaves exactly its own files: nothing from the first attempt
    assert store.list("jobs/9") == ["jobs/9/output/model.safetensors"]
    with store.local_dir("jobs/9/output") as folder:
        assert (folder / "model.safetensors").read_bytes() == b"w2"


def test_missing_keys_and_deletion(store: ArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(StorageError):
        store.open("nope/x")
    with pytest.raises(StorageError):
        with store.local_file("nope/x"):
            pass
    store.put_file(_write(tmp_path / "f", b"1"), "datasets/d/raw/f.csv")
    with store.local_file("datasets/d/raw/f.csv") as p:
        assert p.read_bytes() == b"1"
    store.delete_prefix("datasets/d")
    assert not store.exists("datasets/d/raw/f.csv")
    store.check()


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b"])
def test_rejects_unsafe_keys(store: ArtifactStore, key: str) -> None:
    with pytest.raises(ValueError, match="invalid storage key"):
        store.path(key)
