"""Liveness and readiness probes (no authentication)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from app.core.broker import ping_broker
from app.deps import Services, ServicesDep
from app.errors import error_payload
from app.migrate import current_revision, head_revision
from app.schemas import CheckResult, Health, Ready

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health()


def _checks(services: Services) -> dict[str, CheckResult]:
    results: dict[str, CheckResult] = {}

    def check(name: str, fn) -> None:
        try:
            detail = fn()
            results[name] = CheckResult(ok=True, detail=detail)
        except Exception as exc:
            results[name] = CheckResult(ok=False, detail=f"{type(exc).__name__}: {exc}"[:500])

    def db() -> str:
        with services.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        revision, head = current_revision(services.engine), head_revision()
        if revision != head:
            raise RuntimeError(
                f"schema at {revision}, migrations at {head}: run `dr4sr db upgrade`"
            )
        return f"schema {revision}"

    def broker() -> str:
        ping_broker(services.celery)
        return services.celery.conf.broker_url.split("://", 1)[0]

    def storage() -> str:
        services.store.check()
        return (
            services.store.fs.protocol
            if isinstance(services.store.fs.protocol, str)
            else services.store.fs.protocol[0]
        )

    check("db", db)
    check("broker", broker)
    check("storage", storage)
    return results


@router.get(
    "/readyz",
    response_model=Ready,
    summary="Readiness: database, broker and storage reachable",
    responses={
        503: {
            "description": "A dependency is down; `checks` says which. Body also has "
            "the standard `error` object."
        }
    },
)
async def readyz(services: ServicesDep):
    checks = await run_in_threadpool(_checks, services)
    ready = all(c.ok for c in checks.values())
    body = Ready(status="ready" if ready else "not_ready", checks=checks).model_dump()
    if ready:
        return body
    failing = ", ".join(f"{n}: {c.detail}" for n, c in checks.items() if not c.ok)
    return JSONResponse({**error_payload("not_ready", failing), **body}, status_code=503)
