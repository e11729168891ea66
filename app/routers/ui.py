"""The web console at ``/ui/``: server-rendered page shells (Jinja2) and the
static files they use (``app/ui/static``: the console's script and style,
and Chart.js vendored into the package, so nothing is fetched from a CDN).

The pages carry no data and no credentials: the browser keeps the API key the
user pastes in ``sessionStorage`` and the console's script calls the same
REST API as every other client, with the key on every request. What a page
shows is therefore exactly what the API answers to that key, and another
principal's objects never reach it. Job forms are generated in the browser
from ``/openapi.json``, so they follow the typed configuration.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from app.core.jobstate import STAGE_PLANS

UI_DIR = Path(__file__).resolve().parents[1] / "ui"
templates = Jinja2Templates(directory=str(UI_DIR / "templates"))

router = APIRouter(prefix="/ui", include_in_schema=False)

JOB_KINDS = ("regenerate", "train", "compare")
# No page may be framed by another site, and the console's own script is the
# only script (the HTML report is shown in a sandboxed frame without scripts).
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
        "frame-src 'self' blob:; frame-ancestors 'none'; object-src 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _page(
    request: Request, template: str, page: str, status_code: int = 200, **context
) -> HTMLResponse:
    response = templates.TemplateResponse(
        request,
        template,
        {
            "page": page,
            "stage_plans": {kind: [name for name, _ in plan] for kind, plan in STAGE_PLANS.items()},
            **context,
        },
        status_code=status_code,
    )
    response.headers.update(_HEADERS)
    return response


@router.get("", response_class=RedirectResponse)
def ui_root() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


@router.get("/", response_class=HTMLResponse)
def datasets_page(request: Request) -> HTMLResponse:
    return _page(request, "datasets.html", "datasets", title="Datasets")


@router.get("/datasets/{dataset_id}", response_class=HTMLResponse)
def dataset_page(request: Request, dataset_id: str) -> HTMLResponse:
    return _page(request, "dataset.html", "dataset", title="Dataset", object_id=dataset_id)


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request) -> HTMLResponse:
    return _page(request, "jobs.html", "jobs", title="Jobs")


@router.get("/jobs/new/{kind}", response_class=HTMLResponse)
def new_job_page(request: Request, kind: str) -> HTMLResponse:
    if kind not in JOB_KINDS:
        return _page(
            request, "missing.html", "missing", 404, title="Not found", what=f"job kind {kind}"
        )
    return _page(request, "new_job.html", "new-job", title=f"New {kind} job", kind=kind)


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str) -> HTMLResponse:
    return _page(request, "job.html", "job", title="Job", object_id=job_id)


def install(app: FastAPI) -> None:
    """Mount the console's static files and pages on ``app``."""
    app.mount("/ui/static", StaticFiles(directory=UI_DIR / "static"), name="ui-static")
    app.include_router(router)
