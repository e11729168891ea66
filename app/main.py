"""The FastAPI application factory.

``create_app(settings)`` wires the database, the artifact store and the
Celery client (used only to enqueue tasks by name) and, unless disabled,
applies the Alembic migrations at start-up.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from app import migrate
from app.db import make_engine, make_sessionmaker
from app.deps import Services
from app.errors import install_error_handlers
from app.routers import datasets, health, jobs
from app.settings import Settings, get_settings
from app.storage import ArtifactStore
from workers.celery_app import make_celery

log = logging.getLogger(__name__)

DESCRIPTION = """
Dataset regeneration for sequential recommendation (DR4SR / DR4SR+, KDD 2024) as a service.

Upload an interaction log, regenerate it, download the regenerated dataset in several formats,
and train target recommenders on original or regenerated data (optionally with the DR4SR+
personalizer). Long work runs as jobs: poll `GET /jobs/{id}` for state and progress.

**Authentication**: every route except `/healthz` and `/readyz` needs an API key, sent as
`Authorization: Bearer <key>` or `X-API-Key: <key>` (create one with `dr4sr keys create NAME`;
`dr4sr serve` writes a local key to `var/api-key`). Resources of other keys' owners are 404.

**Errors** always have the shape `{"error": {"code": "...", "message": "...", "field": "..."}}`.
"""


def build_services(settings: Settings) -> Services:
    engine = make_engine(settings.resolved_database_url)
    settings.resolved_work_dir.mkdir(parents=True, exist_ok=True)
    return Services(
        settings=settings,
        engine=engine,
        sessions=make_sessionmaker(engine),
        store=ArtifactStore(settings.resolved_storage_url),
        celery=make_celery(settings),
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.migrate_on_start:
            await run_in_threadpool(migrate.upgrade, settings.resolved_database_url)
        services = build_services(settings)
        app.state.services = services
        try:
            yield
        finally:
            services.engine.dispose()

    app = FastAPI(
        title="DR4SR regeneration service",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_tags=[
            {"name": "datasets", "description": "Upload, inspect and download datasets."},
            {"name": "jobs", "description": "Regenerate, train, compare; follow and cancel."},
            {"name": "health", "description": "Probes for orchestrators."},
        ],
    )
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(datasets.router)
    app.include_router(jobs.router)
    return app
