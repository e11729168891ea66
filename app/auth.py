"""API keys: generation, hashed storage, lookup.

A key is ``dr4sr_`` + 43 url-safe characters (256 random bits). The database
stores only its SHA-256, so a leaked database does not leak usable keys; a
slow password hash is unnecessary because the key space cannot be guessed.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.orm import ApiKey, Principal, utcnow

KEY_PREFIX = "dr4sr_"


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_key(session: Session, principal_name: str) -> tuple[Principal, str]:
    """A new key for ``principal_name`` (created if absent). The key is shown once."""
    name = principal_name.strip()
    if not name or len(name) > 200:
        raise ValueError("principal name must be 1..200 characters")
    principal = session.scalar(select(Principal).where(Principal.name == name))
    if principal is None:
        principal = Principal(name=name)
        session.add(principal)
        session.flush()
    key = generate_key()
    session.add(
        ApiKey(principal_id=principal.id, key_hash=hash_key(key), prefix=key[: len(KEY_PREFIX) + 6])
    )
    session.flush()
    return principal, key


def authenticate(session: Session, presented: str) -> Principal | None:
    """The principal owning ``presented``, or None for unknown/revoked keys."""
    if not presented.startswith(KEY_PREFIX):
        return None
    digest = hash_key(presented)
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
    # The indexed lookup already matched; the constant-time comparison keeps
    # the final decision independent of where two digests first differ.
    if row is None or row.revoked_at is not None or not hmac.compare_digest(row.key_hash, digest):
        return None
    now = utcnow()
    # Recorded at minute granularity: a write on every request would make
    # reads contend for SQLite's single writer.
    if row.last_used_at is None or (now - row.last_used_at).total_seconds() > 60:
        row.last_used_at = now
    return row.principal


def ensure_local_key(session: Session, key_file: Path, principal_name: str = "local") -> str:
    """The embedded mode's key: reuse the one in ``key_file`` if it is still
    valid, else create one and write it there (mode 0600)."""
    if key_file.is_file():
        existing = key_file.read_text().strip()
        if existing and authenticate(session, existing) is not None:
            return existing
    _, key = create_key(session, principal_name)
    key_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = key_file.with_name(key_file.name + ".tmp")
    # Created 0600 from the start: the key is never world-readable, even briefly.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    tmp.replace(key_file)
    return key


@dataclass(frozen=True)
class Caller:
    """Who is calling: the principal's id and name, detached from any session."""

    id: int
    name: str


class CallerCache:
    """Recently authenticated keys, by digest, for ``ttl_s`` seconds.

    Every request would otherwise pay two queries and a commit before its own
    work. A revoked key stays usable for at most ``ttl_s`` seconds in a
    process that saw it just before; ``ttl_s=0`` turns the cache off."""

    def __init__(self, ttl_s: float, max_entries: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, Caller]] = {}
        self._lock = threading.Lock()

    def get(self, digest: str) -> Caller | None:
        if self.ttl_s <= 0:
            return None
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return None
            if entry[0] < time.monotonic():
                del self._entries[digest]
                return None
            return entry[1]

    def put(self, digest: str, caller: Caller) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()  # crude but bounded: refilled on the next requests
            self._entries[digest] = (time.monotonic() + self.ttl_s, caller)
