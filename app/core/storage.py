"""Artifact storage behind one interface: a local folder or any fsspec URL.

Keys are '/'-separated paths relative to the store root (e.g.
``jobs/<id>/output/model.safetensors``). Every write is atomic from a
reader's point of view: data goes to a temporary name first and is renamed
into place, so a crash or a cancelled job never leaves a half-written file
under a real key. On object stores "rename" is copy+delete, which still never
exposes a partial object under the final key.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import fsspec
from fsspec.implementations.local import LocalFileSystem

CHUNK = 1024 * 1024


class StorageError(RuntimeError):
    """A storage operation failed (missing key, unreachable store, disk full)."""


class ObjectMissing(StorageError):
    """A key that should exist does not."""


@dataclass(frozen=True)
class StoredObject:
    key: str
    uri: str
    size: int
    sha256: str


def file_digest(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def _reason(exc: OSError) -> str:
    """The OS's reason without the file names (which are server-side paths)."""
    if exc.errno is not None and exc.strerror:
        return f"[Errno {exc.errno}] {exc.strerror}"
    return str(exc) or type(exc).__name__


def _check_key(key: str) -> str:
    if not key or any(p in ("..", ".", "") for p in key.split("/")):
        raise ValueError(f"invalid storage key {key!r}")
    return key


class ArtifactStore:
    """Files under one root URL, read and written through fsspec."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.fs, root = fsspec.core.url_to_fs(url)
        self.is_local = isinstance(self.fs, LocalFileSystem)
        if self.is_local:
            root = str(Path(root).expanduser().resolve())
            Path(root).mkdir(parents=True, exist_ok=True)
        self.root = root.rstrip("/")

    def __repr__(self) -> str:
        return f"ArtifactStore({self.url!r})"

    def path(self, key: str) -> str:
        return f"{self.root}/{_check_key(key)}"

    def uri(self, key: str) -> str:
        return self.fs.unstrip_protocol(self.path(key))

    # -- writing -------------------------------------------------------------
    def put_file(self, local: Path, key: str) -> StoredObject:
        """Store ``local`` under ``key`` atomically (overwriting any previous version)."""
        size, digest = file_digest(local)
        final = self.path(key)
        tmp = f"{final}.tmp-{uuid.uuid4().hex}"
        parent = final.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        try:
            self.fs.put_file(str(local), tmp)
            if self.is_local:
                os.replace(tmp, final)
            else:
                self.fs.mv(tmp, final)
        except OSError as exc:
            self._remove_quietly(tmp)
            raise StorageError(f"could not store {key!r}: {_reason(exc)}") from exc
        except BaseException:
            self._remove_quietly(tmp)
            raise
        return StoredObject(key, self.uri(key), size, digest)

    def put_dir(self, local_dir: Path, prefix: str) -> list[StoredObject]:
        """Replace everything under ``prefix`` with the files of ``local_dir``.

        The new tree is uploaded beside the old one and swapped in, so a
        rerun overwrites instead of leaving files of two attempts mixed.
        """
        final = self.path(prefix)
        staging = f"{final}.tmp-{uuid.uuid4().hex}"
        files = sorted(p for p in Path(local_dir).rglob("*") if p.is_file())
        stored: list[StoredObject] = []
        rel = ""
        try:
            self.fs.makedirs(staging, exist_ok=True)
            for p in files:
                rel = p.relative_to(local_dir).as_posix()
                size, digest = file_digest(p)
                target = f"{staging}/{rel}"
                self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
                self.fs.put_file(str(p), target)
                key = f"{prefix}/{rel}"
                stored.append(StoredObject(key, self.uri(key), size, digest))
            self._swap_in(staging, final)
        except OSError as exc:
            self._remove_quietly(staging)
            where = f"{prefix}/{rel}" if rel else prefix
            raise StorageError(f"could not store {where!r}: {_reason(exc)}") from exc
        except BaseException:
            self._remove_quietly(staging)
            raise
        return stored

    def _swap_in(self, staging: str, final: str) -> None:
        old = f"{final}.old-{uuid.uuid4().hex}"
        had_old = self.fs.exists(final)
        if self.is_local:
            if had_old:
                os.replace(final, old)
            os.replace(staging, final)
        else:
            if had_old:
                self.fs.mv(final, old, recursive=True)
            self.fs.mv(staging, final, recursive=True)
        if had_old:
            self._remove_quietly(old)

    # -- reading -------------------------------------------------------------
    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self.path(key)))

    def size(self, key: str) -> int:
        try:
            return int(self.fs.size(self.path(key)))
        except FileNotFoundError as exc:
            raise ObjectMissing(f"no stored object {key!r}") from exc

    def open(self, key: str) -> BinaryIO:
        try:
            return self.fs.open(self.path(key), "rb")
        except FileNotFoundError as exc:
            raise ObjectMissing(f"no stored object {key!r}") from exc

    def iter_bytes(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        with self.open(key) as f:
            while chunk := f.read(chunk_size):
                yield chunk

    def list(self, prefix: str) -> list[str]:
        """Keys of every file under ``prefix`` (sorted)."""
        base = self.path(prefix)
        if not self.fs.exists(base):
            return []
        found = self.fs.find(base)
        strip = len(self.root) + 1
        return sorted(self.fs._strip_protocol(f)[strip:] for f in found)

    @contextmanager
    def local_file(self, key: str) -> Iterator[Path]:
        """A local path holding ``key``; a direct path for a local store."""
        if self.is_local:
            path = Path(self.path(key))
            if not path.is_file():
                raise ObjectMissing(f"no stored object {key!r}")
            yield path
            return
        with tempfile.TemporaryDirectory(prefix="dr4sr-fetch-") as tmp:
            target = Path(tmp) / PurePosixPath(key).name
            try:
                self.fs.get_file(self.path(key), str(target))
            except FileNotFoundError as exc:
                raise ObjectMissing(f"no stored object {key!r}") from exc
            yield target

    @contextmanager
    def local_dir(self, prefix: str) -> Iterator[Path]:
        """A local directory holding everything under ``prefix``."""
        if self.is_local:
            path = Path(self.path(prefix))
            if not path.is_dir():
                raise ObjectMissing(f"no stored folder {prefix!r}")
            yield path
            return
        keys = self.list(prefix)
        if not keys:
            raise ObjectMissing(f"no stored folder {prefix!r}")
        with tempfile.TemporaryDirectory(prefix="dr4sr-fetch-") as tmp:
            for key in keys:
                target = Path(tmp) / PurePosixPath(key).relative_to(prefix)
                target.parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(self.path(key), str(target))
            yield Path(tmp)

    # -- removal and health ---------------------------------------------------
    def delete_prefix(self, prefix: str) -> None:
        self._remove_quietly(self.path(prefix))

    def delete(self, key: str) -> None:
        self._remove_quietly(self.path(key))

    def check(self) -> None:
        """Write, read back and delete a probe object (readiness check)."""
        key = f"_health/probe-{uuid.uuid4().hex}"
        payload = b"ok"
        with tempfile.NamedTemporaryFile(delete=False) as f:
            f.write(payload)
        try:
            self.put_file(Path(f.name), key)
            with self.open(key) as r:
                if r.read() != payload:
                    raise StorageError("storage probe read back different bytes")
        finally:
            os.unlink(f.name)
            self.delete(key)

    def _remove_quietly(self, path: str) -> None:
        if self.is_local:
            p = Path(path)
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            elif p.exists():
                p.unlink(missing_ok=True)
            return
        try:
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass


def storage_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) is a disk-full / quota / file-size error."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (
            errno.ENOSPC,
            errno.EDQUOT,
            errno.EFBIG,
        ):
            return True
        current = current.__cause__ or current.__context__
    return False
