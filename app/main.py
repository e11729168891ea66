"""The FastAPI application factory.

``create_app(settings)`` wires the database, the artifact store and the
Celery client (used only to enqueue tasks by name) and, unless disabled,
applies the Alembic migrations at start-up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from anyio import to_thread
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from app import migrate, reads
from app.auth import CallerCache
from app.core.broker import make_celery
from app.core.db import make_engine, make_sessionmaker
from app.core.settings import Settings, get_settings
from app.core.storage import ArtifactStore
from app.deps import Services
from app.errors import ErrorResponse, install_error_handlers
from app.routers import datasets, health, jobs, ui

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


# An upload's temporary file untouched for this long belongs to a request
# that died with its process (each received chunk refreshes the mtime).
STALE_UPLOAD_S = 3600.0


def remove_stale_uploads(folder: Path, older_than_s: float = STALE_UPLOAD_S) -> int:
    """Delete temporary upload files left by an API process that was killed."""
    if not folder.is_dir():
        return 0
    cutoff = time.time() - older_than_s
    removed = 0
    for path in folder.glob("upload-*"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:  # another API process cleaned it meanwhile
            continue
    if removed:
        log.warning("removed %d stale upload file(s) from %s", removed, folder)
    return removed


def build_services(settings: Settings) -> Services:
    engine = make_engine(
        settings.resolved_database_url,
        application_name="dr4sr-api",
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
    )
    settings.resolved_work_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_uploads(settings.resolved_work_dir / "uploads")
    return Services(
        settings=settings,
        engine=engine,
        sessions=make_sessionmaker(engine),
        reader=reads.reader(engine),
        store=ArtifactStore(settings.resolved_storage_url),
        celery=make_celery(settings),
        callers=CallerCache(settings.auth_cache_s),
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.migrate_on_start:
            await run_in_threadpool(migrate.upgrade, settings.resolved_database_url)
        # Every sync endpoint and run_in_threadpool call shares this limiter.
        to_thread.current_default_thread_limiter().total_tokens = settings.request_threads
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
    ui.install(app)  # the web console at /ui/ (not in the OpenAPI document)
    _document_error_shape(app)
    return app


def _document_error_shape(app: FastAPI) -> None:
    """FastAPI documents request-validation failures with its own
    ``HTTPValidationError`` body; this API answers them with the common error
    shape, so the schema is rewritten to say so (clients and fuzzers check
    responses against it)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = generate()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name in ("ErrorBody", "ErrorResponse"):
            if name not in components:
                defs = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(defs.pop("$defs", {}))
                components["ErrorResponse"] = defs
        ref = {"$ref": "#/components/schemas/ErrorResponse"}
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                for status, response in operation.get("responses", {}).items():
                    content = response.get("content", {}).get("application/json", {})
                    if content.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
                        content["schema"] = dict(ref)
                        if status == "422":
                            response["description"] = "The request is invalid."
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        _document_null_defaults(components)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _document_null_defaults(components: dict[str, Any]) -> None:
    """FastAPI writes the document without ``None`` values, which drops every
    ``"default": null``; put them back, so that each optional field of a request
    body says that leaving it out means null (the model's or profile's value)."""
    from pydantic import BaseModel

    import app.schemas
    import models.config

    models_by_name: dict[str, type[BaseModel]] = {}
    for module in (models.config, app.schemas):
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, BaseModel):
                models_by_name[value.__name__] = value
    for name, component in components.items():
        model = models_by_name.get(name)
        properties = component.get("properties", {})
        if model is None:
            continue
        for field_name, info in model.model_fields.items():
            if field_name in properties and not info.is_required() and info.default is None:
                properties[field_name].setdefault("default", None)
