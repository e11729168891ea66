"""Engines and sessions for SQLite (embedded) and PostgreSQL (production)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)


def make_engine(
    url: str,
    *,
    application_name: str | None = None,
    pool_size: int = 5,
    max_overflow: int = 10,
) -> Engine:
    """An engine for ``url``. ``application_name`` labels PostgreSQL sessions
    (``pg_stat_activity``) so operators can tell the API's from the workers'."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # The API, the worker and the CLI open the same file from several
        # processes; WAL plus a generous busy timeout keeps them from failing
        # with "database is locked" on short write overlaps.
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # pragma: no cover - driver hook
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    connect_args: dict[str, object] = {"connect_timeout": 5}
    if application_name:
        connect_args["application_name"] = application_name
    # pre_ping: a connection the server dropped (restart, pg_terminate_backend,
    # idle timeout) is replaced at checkout instead of failing the next request.
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=10,
        connect_args=connect_args,
    )


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def rollback_quietly(session: Session) -> None:
    """Roll back, tolerating a connection the server already dropped (its
    transaction died with it), so the error that matters is the one raised."""
    try:
        session.rollback()
    except DBAPIError:
        log.warning("rollback failed on a lost connection; discarding it", exc_info=True)
        session.invalidate()


def close_quietly(session: Session) -> None:
    """Close after the work is done: a connection dropped meanwhile must not
    turn a finished request (or a committed transaction) into an error."""
    try:
        session.close()
    except DBAPIError:
        log.warning("closing a session on a lost connection; discarding it", exc_info=True)
        session.invalidate()


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session committed on success and rolled back on any exception."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        rollback_quietly(session)
        raise
    finally:
        close_quietly(session)
