"""Fixtures for the console's browser tests: the service in each topology
(embedded `dr4sr serve`; production API + worker on PostgreSQL and a private
redis-server), a headless Chromium from the system's packages driven by
Playwright, and tiny synthetic logs.

Chromium is Debian's (`apt-get install chromium`; .ci/run installs it), never
a browser downloaded by `playwright install`. Without it, or without
PostgreSQL/Redis for the production topology, these tests skip, unless
DR4SR_REQUIRE_SERVICES is set (CI), where they fail.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SERVICE_TESTS = Path(__file__).resolve().parents[1] / "service"
if str(SERVICE_TESTS) not in sys.path:
    sys.path.insert(0, str(SERVICE_TESTS))

from service_harness import (  # noqa: E402
    Proc,
    RedisServer,
    Stack,
    base_env,
    cli,
    free_port,
    fresh_database,
    run_cli,
    show_logs_on_failure,
    unavailable,
    wait_ready,
)

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    for candidate in (
        os.environ.get("DR4SR_CHROMIUM"),
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    unavailable("chromium is not installed (apt-get install chromium)")
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def browser() -> Iterator:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed (pip install -e '.[dev]')")
    executable = chromium_path()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


# -- data ----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory) -> Path:
    """A small synthetic log (validated in the request) and a copy with an
    unparseable timestamp on line 18."""
    from models.data import synthetic

    out = tmp_path_factory.mktemp("ui-data")
    small = synthetic.generate(
        num_users=120, num_items=60, num_patterns=12, min_len=6, max_len=14, seed=1
    )
    synthetic.write(out / "small.csv", small, "csv")
    lines = (out / "small.csv").read_text().splitlines()
    lines[17] = lines[17].rsplit(",", 1)[0] + ",yesterday"
    (out / "bad.csv").write_text("\n".join(lines) + "\n")
    return out


# -- the two topologies ----------------------------------------------------------------
def _embedded(data_dir: Path) -> Stack:
    env = base_env(data_dir)
    port = free_port()
    serve = Proc("serve", cli("serve", "--port", str(port)), env, data_dir / "serve.log").start()
    s = Stack(f"http://127.0.0.1:{port}", env, data_dir, [serve])
    try:
        wait_ready(s.base_url, s.procs)
        key_file = data_dir / "api-key"
        deadline = time.monotonic() + 10
        while not key_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        s.keys["alice"] = key_file.read_text().strip()
        s.keys["bob"] = run_cli(env, "keys", "create", "bob")
    except BaseException:
        s.stop()
        raise
    return s


def _production(data_dir: Path, pg_url: str, redis_url: str) -> Stack:
    env = base_env(
        data_dir,
        DR4SR_DATABASE_URL=pg_url,
        DR4SR_BROKER_URL=redis_url,
        DR4SR_STORAGE_URL=str(data_dir / "artifacts"),
    )
    run_cli(env, "db", "upgrade")
    port = free_port()
    api = Proc("api", cli("api", "--port", str(port)), env, data_dir / "api.log").start()
    worker = Proc("worker", cli("worker"), env, data_dir / "worker.log").start()
    s = Stack(f"http://127.0.0.1:{port}", env, data_dir, [api, worker])
    try:
        wait_ready(s.base_url, s.procs)
        s.keys = {who: run_cli(env, "keys", "create", who) for who in ("alice", "bob")}
    except BaseException:
        s.stop()
        raise
    return s


@pytest.fixture(scope="module", params=["embedded", "production"])
def stack(request, tmp_path_factory) -> Iterator[Stack]:
    """The service in one topology, with two principals' keys (alice, bob)."""
    data_dir = tmp_path_factory.mktemp(request.param)
    if request.param == "embedded":
        s = _embedded(data_dir)
        try:
            yield s
        finally:
            s.stop()
        return
    if not shutil.which("redis-server"):
        unavailable("redis-server is not installed")
    with fresh_database("dr4sr_ui") as (pg_url, _):
        redis = RedisServer(data_dir / "redis").start()
        try:
            s = _production(data_dir, pg_url, redis.url)
            try:
                yield s
            finally:
                s.stop()
        finally:
            redis.stop()


@pytest.fixture
def print_logs_on_failure(request, stack: Stack) -> Iterator[None]:
    yield
    show_logs_on_failure(request, stack)
