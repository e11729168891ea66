"""Fixtures for the service tests: a fresh PostgreSQL database and a
private redis-server per session, and tiny synthetic data files.

PostgreSQL unreachable or redis-server not installed skips these tests,
unless DR4SR_REQUIRE_SERVICES is set (CI), where it fails them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from service_harness import (
    MAX_UPLOAD,
    SYNC_MAX,
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

REDIS_URL = os.environ.get("DR4SR_TEST_REDIS_URL")  # None: a private redis-server


# -- PostgreSQL and Redis --------------------------------------------------------
@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh database for this test session, dropped afterwards."""
    with fresh_database() as (url, _):
        yield url


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> Iterator[str]:
    """A private redis-server for this session, so that another test session
    running at the same time (or a worker it left behind) can never consume
    this session's tasks or flush its queues. DR4SR_TEST_REDIS_URL names a
    shared server instead (its db is flushed before and after)."""
    if REDIS_URL is None:
        server = RedisServer(tmp_path_factory.mktemp("redis")).start()
        try:
            yield server.url
        finally:
            server.stop()
        return

    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        unavailable(f"Redis at {REDIS_URL} unreachable: {exc}")
    client.flushdb()  # a dedicated db number: only ours is cleared
    try:
        yield REDIS_URL
    finally:
        client.flushdb()
        client.close()


# -- tiny data ---------------------------------------------------------------------
@pytest.fixture(scope="session")
def datasets_dir(tmp_path_factory) -> Path:
    """Synthetic interaction logs: a small one (validated in the request) and
    a larger one (validated by a job), plus a malformed large file."""
    from models.data import synthetic

    out = tmp_path_factory.mktemp("data")
    small = synthetic.generate(
        num_users=120, num_items=60, num_patterns=12, min_len=6, max_len=14, seed=1
    )
    synthetic.write(out / "small.csv", small, "csv")
    large = synthetic.generate(
        num_users=400, num_items=80, num_patterns=16, min_len=6, max_len=16, seed=2
    )
    synthetic.write(out / "large.csv", large, "csv")
    good = (out / "large.csv").read_text().splitlines()
    bad = good[:200] + [good[200].rsplit(",", 1)[0] + ",yesterday"] + good[201:]
    (out / "bad_large.csv").write_text("\n".join(bad) + "\n")
    return out


# -- the production topology -----------------------------------------------------
@pytest.fixture(scope="session")
def stack(pg_url: str, redis_url: str, tmp_path_factory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("prod")
    env = base_env(
        data_dir,
        DR4SR_DATABASE_URL=pg_url,
        DR4SR_BROKER_URL=redis_url,
        DR4SR_STORAGE_URL=str(data_dir / "artifacts"),
        DR4SR_SYNC_VALIDATION_MAX_BYTES=str(SYNC_MAX),
        DR4SR_MAX_UPLOAD_BYTES=str(MAX_UPLOAD),
    )
    port = free_port()
    run_cli(env, "db", "upgrade")
    api = Proc("api", cli("api", "--port", str(port)), env, data_dir / "api.log").start()
    worker = Proc("worker", cli("worker"), env, data_dir / "worker.log").start()
    s = Stack(f"http://127.0.0.1:{port}", env, data_dir, [api, worker])
    try:
        wait_ready(s.base_url, s.procs)
        s.keys = {who: run_cli(env, "keys", "create", who) for who in ("alice", "bob")}
        yield s
    finally:
        s.stop()


@pytest.fixture
def print_logs_on_failure(request, stack: Stack) -> Iterator[None]:
    """Show the API and worker logs when a test against the stack fails."""
    yield
    show_logs_on_failure(request, stack)
