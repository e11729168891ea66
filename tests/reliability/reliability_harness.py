"""Real processes for the fault tests: a private redis-server, a fresh
PostgreSQL database, and an API + worker(s) stack that a test can kill,
restart and extend. Builds on tests/service/service_harness.py."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

SERVICE_TESTS = Path(__file__).resolve().parents[1] / "service"
if str(SERVICE_TESTS) not in sys.path:
    sys.path.insert(0, str(SERVICE_TESTS))

from service_harness import (  # noqa: E402
    REPO,
    Proc,
    RedisServer,
    Stack,
    base_env,
    cli,
    free_port,
    pg_admin,
    show_logs_on_failure,
    wait_ready,
)
from service_harness import fresh_database as shared_fresh_database  # noqa: E402

FAULTS_DIR = Path(__file__).resolve().parent / "faults"

# Limits of the shared API-only service (conftest.api_service), small enough
# to reach in a test.
MAX_UPLOAD = 200_000
SYNC_MAX = 60_000
MAX_LINE = 64 * 1024
MAX_DECOMPRESSED = 24 * 1024 * 1024
MAX_ACTIVE_JOBS = 2
QUOTA = 250_000  # a small dataset stores ~41 kB (raw + prepared)


# -- PostgreSQL ----------------------------------------------------------------------
@contextmanager
def fresh_database() -> Iterator[tuple[str, str]]:
    """(SQLAlchemy URL, database name) of a new database, dropped afterwards."""
    with shared_fresh_database("dr4sr_rel") as made:
        yield made


def terminate_backends(db_name: str, application_prefix: str = "dr4sr-") -> int:
    """pg_terminate_backend on the service's connections to ``db_name`` (only
    ours: the server is shared with other tests). Returns how many were cut."""
    _, conn = pg_admin()
    try:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND application_name LIKE %s AND pid <> pg_backend_pid()",
            (db_name, application_prefix + "%"),
        ).fetchall()
        return sum(1 for (ok,) in rows if ok)
    finally:
        conn.close()


# -- the stack -------------------------------------------------------------------------
@dataclass
class Service:
    """API + workers on one PostgreSQL database, one Redis and one store."""

    data_dir: Path
    env: dict[str, str]
    port: int
    db_name: str
    api: Proc | None = None
    workers: list[Proc] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)
    _n: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def store_dir(self) -> Path:
        return Path(self.env["DR4SR_STORAGE_URL"])

    def start_api(self) -> Proc:
        self._n += 1
        self.api = Proc(
            "api",
            cli("api", "--port", str(self.port)),
            self.env,
            self.data_dir / f"api-{self._n}.log",
        ).start()
        wait_ready(self.base_url, [self.api])
        return self.api

    def start_worker(self) -> Proc:
        self._n += 1
        worker = Proc(
            f"worker-{self._n}",
            cli("worker"),
            self.env,
            self.data_dir / f"worker-{self._n}.log",
        ).start()
        self.workers.append(worker)
        return worker

    def wait_worker_ready(self, worker: Proc, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not worker.alive():
                raise RuntimeError(f"{worker.name} exited:\n{worker.tail()}")
            if " ready." in worker.tail(400):
                return
            time.sleep(0.2)
        raise RuntimeError(f"{worker.name} not ready after {timeout}s:\n{worker.tail()}")

    def kill(self, proc: Proc, sig: int = signal.SIGKILL) -> None:
        assert proc.proc is not None
        os.killpg(proc.proc.pid, sig)
        proc.proc.wait(timeout=30)
        if proc in self.workers:
            self.workers.remove(proc)

    def stack(self) -> Stack:
        procs = [p for p in [self.api, *self.workers] if p is not None]
        return Stack(self.base_url, self.env, self.data_dir, procs, self.keys)

    def client(self, who: str = "alice", timeout: float = 60) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            headers={"Authorization": f"Bearer {self.keys[who]}"},
        )

    def add_key(self, who: str) -> str:
        from app.auth import create_key
        from app.core.db import make_engine, make_sessionmaker, session_scope

        engine = make_engine(self.env["DR4SR_DATABASE_URL"])
        try:
            with session_scope(make_sessionmaker(engine)) as session:
                _, key = create_key(session, who)
        finally:
            engine.dispose()
        self.keys[who] = key
        return key

    def logs(self) -> str:
        procs = [p for p in [self.api, *self.workers] if p is not None]
        return "\n".join(f"--- {p.name}\n{p.tail(80)}" for p in procs)

    def worker_logs(self) -> str:
        return "\n".join(
            p.read_text(errors="replace") for p in sorted(self.data_dir.glob("worker-*.log"))
        )

    def stop(self) -> None:
        # Workers are killed outright: a Celery warm shutdown idles ~6 s in its
        # consumer loop, and nothing here depends on it.
        for worker in list(self.workers):
            if worker.alive():
                self.kill(worker)
        if self.api is not None:
            self.api.stop()


def make_service(
    data_dir: Path,
    database_url: str,
    db_name: str,
    broker_url: str,
    *,
    storage_dir: Path | None = None,
    workers: int = 1,
    extra_env: dict[str, str] | None = None,
    **settings: str,
) -> Service:
    """Migrate, start the API and ``workers`` workers, create alice's and bob's
    keys. ``settings`` are Settings fields (``lease_s="4"``)."""
    from app import migrate

    storage = storage_dir or data_dir / "artifacts"
    env = base_env(
        data_dir,
        DR4SR_DATABASE_URL=database_url,
        DR4SR_BROKER_URL=broker_url,
        DR4SR_STORAGE_URL=str(storage),
        DR4SR_LEASE_S="4",
        DR4SR_CHECKPOINT_SYNC_INTERVAL_S="0",
        **{f"DR4SR_{k.upper()}": v for k, v in settings.items()},
        **(extra_env or {}),
    )
    migrate.upgrade(database_url)
    service = Service(data_dir, env, free_port(), db_name)
    try:
        started = [service.start_worker() for _ in range(workers)]
        service.start_api()
        for w in started:
            service.wait_worker_ready(w)
        for who in ("alice", "bob"):
            service.add_key(who)
    except BaseException:
        service.stop()
        raise
    return service


# -- polling and storage ------------------------------------------------------------------
def wait_for(client: httpx.Client, job_id: str, predicate, timeout: float = 120, what: str = ""):
    deadline = time.monotonic() + timeout
    job: dict = {}
    while time.monotonic() < deadline:
        r = client.get(f"/jobs/{job_id}")
        if r.status_code == 200:
            job = r.json()
            if predicate(job):
                return job
        time.sleep(0.15)
    raise AssertionError(f"job {job_id} never {what or 'matched'}: {job}")


def finished(job: dict) -> bool:
    return job["state"] in ("succeeded", "failed", "cancelled")


def files_under(root: Path) -> list[str]:
    """Every file below ``root``, as '/'-joined relative paths."""
    if not root.exists():
        return []
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def artifact_names(database_url: str, job_id: str) -> list[str]:
    from sqlalchemy import select

    from app.core.db import make_engine, make_sessionmaker
    from app.core.orm import Artifact

    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as session:
            return sorted(session.scalars(select(Artifact.name).where(Artifact.job_id == job_id)))
    finally:
        engine.dispose()


__all__ = ["REPO", "FAULTS_DIR", "RedisServer", "show_logs_on_failure"]
