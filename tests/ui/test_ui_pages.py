"""The console's pages and files as the server hands them out (no browser):
every page is an empty shell with no data in it, nothing is loaded from
another site, Chart.js is vendored with its licence, and the console stays
out of the OpenAPI document."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.routers import ui

VENDOR = Path(ui.UI_DIR) / "static" / "vendor"
PAGES = [
    "/ui/",
    "/ui/datasets/6f1c8a52-2b1e-4c55-9d2a-0c5b8d0c1e7a",
    "/ui/jobs",
    "/ui/jobs/new/regenerate",
    "/ui/jobs/new/train",
    "/ui/jobs/new/compare",
    "/ui/jobs/6f1c8a52-2b1e-4c55-9d2a-0c5b8d0c1e7a",
]


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    ui.install(app)
    return TestClient(app)


@pytest.mark.parametrize("path", PAGES)
def test_pages_are_shells_that_load_only_the_packages_own_files(client, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert r.headers["cache-control"] == "no-store"
    sources = re.findall(r'(?:src|href)="([^"]+)"', r.text)
    assert sources and all(s.startswith(("/", "#", "data:")) for s in sources), sources
    for asset in (s for s in sources if s.startswith("/ui/static/")):
        assert client.get(asset).status_code == 200, asset
    assert 'id="api-key"' in r.text and "<label" in r.text


def test_the_root_redirects_and_unknown_kinds_are_404(client) -> None:
    r = client.get("/ui", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/ui/"
    assert client.get("/ui/jobs/new/delete-everything").status_code == 404
    assert client.get("/ui/static/../routers/ui.py").status_code == 404


def test_an_id_in_the_address_is_escaped(client) -> None:
    r = client.get("/ui/jobs/%22%3E%3Cimg%20src=x%20onerror=alert(1)%3E")
    assert r.status_code == 200
    assert "<img src=x" not in r.text and "&#34;&gt;&lt;img" in r.text


def test_chart_js_is_vendored_unmodified_with_its_licence() -> None:
    readme = (VENDOR / "README.md").read_text()
    digest = hashlib.sha256((VENDOR / "chart.umd.min.js").read_bytes()).hexdigest()
    assert digest in readme
    assert "MIT License" in (VENDOR / "chart.js-LICENSE.md").read_text()


def test_the_console_is_not_part_of_the_api_document() -> None:
    from app.main import create_app
    from app.settings import Settings

    app = create_app(Settings(migrate_on_start=False))
    paths = app.openapi()["paths"]
    assert paths and not any(p.startswith("/ui") for p in paths)
    # ...and yet served by the API's own app (no lifespan needed for a shell)
    assert TestClient(app).get("/ui/jobs").status_code == 200


def test_a_missing_mapped_column_is_the_mapping_fields_error() -> None:
    from app.ingest import _data_error_field
    from models.data.errors import ColumnError, TimestampError

    missing = ColumnError("missing column(s) 'customer'; found 'user_id', 'item_id'", file="a.csv")
    assert _data_error_field(missing, {"user_col": "customer"}) == "user_col"
    assert _data_error_field(missing, {"item_col": "customer"}) == "item_col"
    assert _data_error_field(missing, {}) == "file"
    bad = TimestampError("cannot parse 'x'", file="a.csv", line=3, column="ts")
    assert _data_error_field(bad, {"time_col": "ts"}) == "file.ts"
