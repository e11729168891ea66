"""FastAPI dependencies: the service container, DB sessions, the caller."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated

from anyio import CapacityLimiter, to_thread
from celery import Celery
from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from app.auth import Caller, CallerCache, authenticate, hash_key
from app.core.db import close_quietly, rollback_quietly, session_scope
from app.core.settings import Settings
from app.core.storage import ArtifactStore
from app.errors import Unauthorized


@dataclass
class Services:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: ArtifactStore
    celery: Celery
    reader: Engine  # the same pool in autocommit mode, for the polled reads (app.reads)
    callers: CallerCache = field(default_factory=lambda: CallerCache(10.0))
    # key digest -> the lookup in flight for it (touched only on the event loop)
    lookups: dict[str, asyncio.Future] = field(default_factory=dict)


def get_services(request: Request) -> Services:
    return request.app.state.services


async def get_session(
    services: Annotated[Services, Depends(get_services)],
) -> AsyncIterator[Session]:
    # Creating a session does no I/O; it connects on first use, in the
    # endpoint's thread. Closing does (the pool rolls the connection back), so
    # it runs in a thread too, but under its own limiter, as FastAPI does for
    # sync dependencies: were it to queue for the shared thread pool, busy
    # endpoints waiting for a pooled connection would starve the very closes
    # that return connections to the pool. Teardown runs after the response
    # is built: an exception here would drop the connection without any
    # answer, so a lost database connection is discarded quietly.
    session = services.sessions()
    try:
        yield session
    except BaseException:
        await to_thread.run_sync(rollback_quietly, session, limiter=CapacityLimiter(1))
        raise
    finally:
        if session.in_transaction():
            await to_thread.run_sync(close_quietly, session, limiter=CapacityLimiter(1))
        else:  # never used (or already closed): no I/O left, no thread needed
            session.close()


bearer_scheme = HTTPBearer(
    auto_error=False,
    description="`Authorization: Bearer <key>` with a key from `dr4sr keys create`.",
)
api_key_scheme = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="The same key in an `X-API-Key` header."
)


def _lookup(services: Services, presented: str) -> Caller | None:
    with session_scope(services.sessions) as session:  # commits last_used_at
        principal = authenticate(session, presented)
        return None if principal is None else Caller(principal.id, principal.name)


async def current_principal(
    services: Annotated[Services, Depends(get_services)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
    api_key: Annotated[str | None, Security(api_key_scheme)],
) -> Caller:
    presented = (bearer.credentials if bearer is not None else api_key or "").strip()
    if not presented:
        raise Unauthorized(
            "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    digest = hash_key(presented)
    caller = services.callers.get(digest)
    if caller is None:
        caller = await _lookup_once(services, digest, presented)
        if caller is None:
            raise Unauthorized("unknown or revoked API key", headers={"WWW-Authenticate": "Bearer"})
        services.callers.put(digest, caller)
    return caller


async def _lookup_once(services: Services, digest: str, presented: str) -> Caller | None:
    """One database lookup per key at a time: when a cached key expires under
    load, the hundreds of requests that miss together wait for the first
    one's answer instead of each taking a thread and a connection."""
    pending = services.lookups
    shared = pending.get(digest)
    if shared is not None:
        return await asyncio.shield(shared)
    shared = asyncio.get_running_loop().create_future()
    pending[digest] = shared
    try:
        caller = await run_in_threadpool(_lookup, services, presented)
    except BaseException as exc:
        shared.set_exception(exc)
        shared.exception()  # retrieved here, so no "never retrieved" warning without waiters
        raise
    else:
        shared.set_result(caller)
        return caller
    finally:
        del pending[digest]


ServicesDep = Annotated[Services, Depends(get_services)]
SessionDep = Annotated[Session, Depends(get_session)]
PrincipalDep = Annotated[Caller, Depends(current_principal)]
