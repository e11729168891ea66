"""Imports run one way: the HTTP layer (app/) and the workers (workers/) both
use the shared core (app/core/), neither imports the other, and models/
imports none of them. The command line (app/cli.py, app/commands/) is the
composition root that starts both, so it may import either."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ALIASES = {"settings", "db", "orm", "storage", "jobstate", "datasets"}  # old-path aliases of app.core.*


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _files(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def _violations(files: list[Path], forbidden: tuple[str, ...], allowed: tuple[str, ...] = ()) -> list[str]:
    out = []
    for path in files:
        for name in _imports(path):
            if name.startswith(forbidden) and not name.startswith(allowed):
                out.append(f"{path.relative_to(REPO)} imports {name}")
    return out


def test_core_imports_neither_the_http_layer_nor_the_workers() -> None:
    bad = _violations(_files("app/core"), ("app.", "workers", "fastapi", "torch"), ("app.core",))
    assert not bad, bad


def test_http_layer_does_not_import_the_workers() -> None:
    http = [p for p in _files("app") if "commands" not in p.parts and p.name not in ("cli.py", "demo.py")]
    assert not _violations(http, ("workers",))


def test_workers_use_only_the_core_of_app() -> None:
    workers = [p for p in _files("workers") if p.name != "celery_app.py"]  # the old-path alias
    assert not _violations(workers, ("app.",), ("app.core",))


def test_models_import_no_service_code() -> None:
    assert not _violations(_files("models"), ("app", "workers", "fastapi", "celery", "sqlalchemy"))


def test_old_paths_are_aliases_of_the_core_modules() -> None:
    import importlib

    for name in sorted(ALIASES):
        assert importlib.import_module(f"app.{name}") is importlib.import_module(f"app.core.{name}")
