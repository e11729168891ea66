"""Helpers for the service tests: start API / worker processes, wait for
readiness, run CLI commands. (A plain module, not conftest, so test files
can import it by a name unique in the repository.)"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
REQUIRE = bool(os.environ.get("DR4SR_REQUIRE_SERVICES"))


def unavailable(reason: str) -> None:
    """Skip, or fail when DR4SR_REQUIRE_SERVICES is set (CI)."""
    if REQUIRE:
        pytest.fail(f"{reason} (DR4SR_REQUIRE_SERVICES is set)")
    pytest.skip(reason)


# -- processes ---------------------------------------------------------------------
# -- PostgreSQL ----------------------------------------------------------------------
PG_HOST = os.environ.get("DR4SR_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("DR4SR_TEST_PG_PORT", "5432"))
PG_USERS = ("postgres", "root")


def pg_admin():
    """An autocommit admin connection to the shared server (skip when absent)."""
    import psycopg

    errors = []
    for user in PG_USERS:
        try:
            conn = psycopg.connect(
                host=PG_HOST,
                port=PG_PORT,
                user=user,
                dbname="test",
                connect_timeout=3,
                autocommit=True,
            )
            return user, conn
        except psycopg.Error as exc:
            errors.append(f"{user}: {exc}".strip())
    unavailable(f"PostgreSQL at {PG_HOST}:{PG_PORT} unreachable: {'; '.join(errors)}")
    raise AssertionError("unreachable")


@contextmanager
def fresh_database(prefix: str = "dr4sr_test") -> Iterator[tuple[str, str]]:
    """(SQLAlchemy URL, database name) of a new database, dropped afterwards."""
    user, conn = pg_admin()
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{user}@{PG_HOST}:{PG_PORT}/{name}", name
    finally:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


def show_logs_on_failure(request, processes) -> None:
    """Print ``processes.logs()`` when the test of ``request`` failed (call this
    after a fixture's yield; tests/conftest.py records the reports)."""
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(processes.logs())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Proc:
    name: str
    args: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen | None = None

    def start(self) -> Proc:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log, "wb")
        self.proc = subprocess.Popen(
            self.args,
            env=self.env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # The process group holds `dr4sr serve`'s worker child as well.
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@dataclass
class RedisServer:
    """A private redis-server without persistence (a restart loses every
    message: the harshest case for 'the job table stays the truth'). A test
    session's own broker: no other session's workers can consume its queues,
    and none of its messages outlive it."""

    folder: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("redis-server is not installed")
        self.folder.mkdir(parents=True, exist_ok=True)
        log = open(self.folder / "redis.log", "ab")
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self._wait()
        return self

    def _wait(self, timeout: float = 10) -> None:
        import redis

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                log = (self.folder / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server on port {self.port} exited:\n{log}")
            client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
            try:
                client.ping()
                return
            except redis.RedisError:
                time.sleep(0.05)
            finally:
                client.close()
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # SIGKILL: nothing is flushed, as in a crash
            self.proc.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "app.cli", *args]


def run_cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        cli(*args), env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"dr4sr {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout.strip()


def wait_ready(base_url: str, procs: list[Proc], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        for p in procs:
            if not p.alive():
                raise RuntimeError(f"{p.name} exited early:\n{p.tail()}")
        try:
            r = httpx.get(f"{base_url}/readyz", timeout=5)
            if r.status_code == 200:
                return
            last = r.text
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.3)
    raise RuntimeError(
        f"service not ready after {timeout}s: {last}\n"
        + "\n".join(f"--- {p.name}\n{p.tail()}" for p in procs)
    )


@dataclass
class Stack:
    """A running service: its URL, its environment, its processes and keys."""

    base_url: str
    env: dict[str, str]
    data_dir: Path
    procs: list[Proc]
    keys: dict[str, str] = field(default_factory=dict)

    def client(self, who: str = "alice") -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url,
            timeout=60,
            headers={"Authorization": f"Bearer {self.keys[who]}"},
        )

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.tail(120)}" for p in self.procs)

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()


def base_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DR4SR_")}
    if "DR4SR_REQUIRE_SERVICES" in os.environ:
        env["DR4SR_REQUIRE_SERVICES"] = os.environ["DR4SR_REQUIRE_SERVICES"]
    env.update(
        {
            "DR4SR_DATA_DIR": str(data_dir),
            "DR4SR_LEASE_S": "6",
            "DR4SR_PROGRESS_INTERVAL_S": "0.2",
            "DR4SR_BROKER_POLLING_INTERVAL_S": "0.2",
            "DR4SR_RETRY_BACKOFF_S": "1",
            "DR4SR_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
            # keep the two cores for the two processes
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
    )
    env.update(extra)
    return env


SYNC_MAX = (
    50_000  # the small file (~26 kB) is validated in the request, the large (~100 kB) by a job
)
MAX_UPLOAD = 300_000


# -- HTTP helpers ------------------------------------------------------------------
def upload(client: httpx.Client, path: Path, **fields: str) -> httpx.Response:
    with open(path, "rb") as f:
        return client.post("/datasets", files={"file": (path.name, f)}, data=fields)


def poll(
    client: httpx.Client,
    job_id: str,
    until: tuple[str, ...] = ("succeeded", "failed", "cancelled"),
    timeout: float = 180,
    stack: Stack | None = None,
) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["state"] in until:
            return job
        time.sleep(0.25)
    raise AssertionError(
        f"job {job_id} still {job['state']} after {timeout}s\n" + (stack.logs() if stack else "")
    )


def stored_files(stack: Stack, prefix: str) -> list[Path]:
    root = stack.data_dir / "artifacts" / prefix
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def assert_error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) >= {"error"} and {"code", "message"} <= set(body["error"]), body
    if code:
        assert body["error"]["code"] == code, body
    return body["error"]
