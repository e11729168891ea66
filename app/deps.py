"""FastAPI dependencies: the service container, DB sessions, the caller."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from celery import Celery
from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.auth import authenticate
from app.errors import Unauthorized
from app.orm import Principal
from app.settings import Settings
from app.storage import ArtifactStore


@dataclass
class Services:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: ArtifactStore
    celery: Celery


def get_services(request: Request) -> Services:
    return request.app.state.services


def get_session(services: Annotated[Services, Depends(get_services)]) -> Iterator[Session]:
    session = services.sessions()
    try:
        yield session
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


bearer_scheme = HTTPBearer(
    auto_error=False,
    description="`Authorization: Bearer <key>` with a key from `dr4sr keys create`.",
)
api_key_scheme = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="The same key in an `X-API-Key` header."
)


def current_principal(
    session: Annotated[Session, Depends(get_session)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
    api_key: Annotated[str | None, Security(api_key_scheme)],
) -> Principal:
    presented = bearer.credentials if bearer is not None else api_key
    if not presented:
        raise Unauthorized(
            "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    principal = authenticate(session, presented.strip())
    if principal is None:
        raise Unauthorized("unknown or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    session.commit()  # persists last_used_at
    return principal


ServicesDep = Annotated[Services, Depends(get_services)]
SessionDep = Annotated[Session, Depends(get_session)]
PrincipalDep = Annotated[Principal, Depends(current_principal)]
