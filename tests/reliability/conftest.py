"""Fixtures for the reliability tests: tiny interaction logs and the
print-logs-on-failure hook. Each test module starts its own real service
(see reliability_harness.py) on a fresh PostgreSQL database and a private
redis-server, and stops it when the module ends: nothing started here
outlives its module (checked below), so no API, worker or broker of these
tests can touch the tests that run after them (tests/service shares the
PostgreSQL server and uses the shared Redis)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="module", autouse=True)
def _no_process_outlives_its_module() -> Iterator[None]:
    """Fail the module, after killing them, when processes it started are
    still running at its end (a worker left consuming, an API holding its
    connections, a redis-server). Only this session's own children, by pid."""
    import psutil

    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield

    def alive(p: psutil.Process) -> bool:
        try:
            return p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    left = [p for p in me.children(recursive=True) if p.pid not in before and alive(p)]
    described = []
    for p in left:
        try:
            described.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
            p.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(left, timeout=10)
    assert not described, f"processes left running by this module: {described}"


@pytest.fixture(scope="session")
def tiny_logs(tmp_path_factory) -> dict[str, Path]:
    """small.csv (validated in the request) and medium.csv (a few seconds of
    training per run), synthetic with planted patterns."""
    from models.data import synthetic

    out = tmp_path_factory.mktemp("rel-data")
    small = synthetic.generate(
        num_users=120, num_items=60, num_patterns=12, min_len=6, max_len=14, seed=1
    )
    synthetic.write(out / "small.csv", small, "csv")
    return {"small": out / "small.csv"}


@pytest.fixture(scope="module")
def api_service(tmp_path_factory):
    """The API alone (no worker: submitted jobs stay queued) on its own
    database and Redis, with small upload, quota and job limits; one per
    module. Tests create their own principals with ``api_service.add_key(name)``."""
    from reliability_harness import (
        MAX_ACTIVE_JOBS,
        MAX_DECOMPRESSED,
        MAX_LINE,
        MAX_UPLOAD,
        QUOTA,
        SYNC_MAX,
        RedisServer,
        fresh_database,
        make_service,
    )

    root = tmp_path_factory.mktemp("rel-api")
    redis = RedisServer(root / "redis").start()
    try:
        with fresh_database() as (url, name):
            service = make_service(
                root,
                url,
                name,
                redis.url,
                workers=0,
                max_upload_bytes=str(MAX_UPLOAD),
                sync_validation_max_bytes=str(SYNC_MAX),
                max_line_bytes=str(MAX_LINE),
                max_decompressed_bytes=str(MAX_DECOMPRESSED),
                max_compression_ratio="100",
                max_active_jobs_per_principal=str(MAX_ACTIVE_JOBS),
                max_stored_bytes_per_principal=str(QUOTA),
            )
            try:
                yield service
            finally:
                service.stop()
    finally:
        redis.stop()
