"""The embedded default: `dr4sr serve` with SQLite, a local artifact folder
and kombu's filesystem transport (no Redis, no PostgreSQL), the same task
code as production."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from service_harness import SYNC_MAX, Proc, Stack, base_env, cli, free_port, wait_ready

from models.data.export import read_sequences


def _start(data_dir: Path, port: int, *extra: str) -> Stack:
    # a short lease so a dead worker's job is noticed within seconds
    env = base_env(data_dir, DR4SR_SYNC_VALIDATION_MAX_BYTES=str(SYNC_MAX), DR4SR_LEASE_S="3")
    serve = Proc(
        "serve", cli("serve", "--port", str(port), *extra), env, data_dir / f"serve-{port}.log"
    ).start()
    s = Stack(f"http://127.0.0.1:{port}", env, data_dir, [serve])
    try:
        wait_ready(s.base_url, s.procs)
        key_file = data_dir / "api-key"
        deadline = time.monotonic() + 10
        while not key_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        s.keys["local"] = key_file.read_text().strip()
    except BaseException:
        s.stop()
        raise
    return s


@pytest.fixture(scope="module")
def embedded(tmp_path_factory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("embedded")
    s = _start(data_dir, free_port())
    try:
        yield s
    finally:
        s.stop()


def _worker_pid(stack: Stack) -> int | None:
    serve = psutil.Process(stack.procs[0].proc.pid)
    for child in serve.children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "worker" in child.cmdline():
                return child.pid
        except psutil.Error:  # exited between listing and inspection
            continue
    return None


def _poll(client: httpx.Client, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.25)
    raise AssertionError(f"job {job_id} still {job['state']}")


def test_serve_writes_a_private_local_key_and_uses_embedded_backends(embedded: Stack) -> None:
    key_file = embedded.data_dir / "api-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert embedded.keys["local"].startswith("dr4sr_")
    checks = httpx.get(f"{embedded.base_url}/readyz").json()["checks"]
    assert checks["broker"]["detail"] == "filesystem" and checks["db"]["ok"]
    assert (embedded.data_dir / "dr4sr.sqlite").is_file()
    with embedded.client("local") as c:
        assert c.get("/datasets").status_code == 200


def test_uploads_are_validated_inline_and_by_the_embedded_worker(
    embedded: Stack, datasets_dir: Path
) -> None:
    with embedded.client("local") as c:
        with open(datasets_dir / "small.csv", "rb") as f:
            r = c.post("/datasets", files={"file": ("small.csv", f)})
        assert r.status_code == 201 and r.json()["status"] == "ready", r.text
        with open(datasets_dir / "large.csv", "rb") as f:
            r = c.post("/datasets", files={"file": ("large.csv", f)})
        assert r.status_code == 202, r.text
        job = _poll(c, r.json()["validation_job_id"])
        assert job["state"] == "succeeded", (job, embedded.logs())
        assert c.get(f"/datasets/{r.json()['id']}").json()["status"] == "ready"


def test_a_job_survives_its_worker_dying(
    embedded: Stack, datasets_dir: Path, tmp_path: Path
) -> None:
    """SIGKILL the worker mid-regeneration: `serve` restarts it, the stale
    lease is noticed, the job runs again (attempt 2) and succeeds; its
    regenerated data downloads with original ids."""
    params = {
        "pretrain_epochs": 0,
        "regenerator_epochs": 4,
        "max_pairs": 3,
        "device": "cpu",
        "regenerator": {
            "ffn_dim": 64,
            "cond_ffn_dim": 64,
            "enc_layers": 1,
            "dec_layers": 1,
            "cond_layers": 1,
        },
    }
    with embedded.client("local") as c:
        with open(datasets_dir / "small.csv", "rb") as f:
            ds = c.post("/datasets", files={"file": ("crash.csv", f)}).json()
        job = c.post("/jobs/regenerate", json={"dataset_id": ds["id"], "parameters": params}).json()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            job = c.get(f"/jobs/{job['id']}").json()
            if "regenerator" in job["progress"]["stages"]:
                break
            assert job["state"] in ("queued", "running"), job
            time.sleep(0.1)
        else:
            raise AssertionError(f"never reached the regenerator stage: {job}")
        pid = _worker_pid(embedded)
        assert pid is not None, embedded.logs()
        os.kill(pid, signal.SIGKILL)

        job = _poll(c, job["id"], timeout=240)
        assert job["state"] == "succeeded", (job, embedded.logs())
        assert job["attempts"] == 2
        assert _worker_pid(embedded) not in (None, pid)
        # exactly one set of artifacts: the stored files are the artifact rows,
        # with nothing left of the killed attempt (no staging folder, no copy)
        root = embedded.data_dir / "artifacts" / "jobs" / job["id"]
        stored = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        with sqlite3.connect(embedded.data_dir / "dr4sr.sqlite") as db:
            rows = db.execute("SELECT name FROM artifacts WHERE job_id = ?", (job["id"],))
            names = sorted(r[0] for r in rows)
        assert stored == names and all(n.startswith("output/") for n in stored), stored
        assert "output/regenerated.npz" in stored

        r = c.get(f"/datasets/{ds['id']}/regenerated", params={"format": "txt"})
        assert r.status_code == 200, r.text
    (tmp_path / "regen.txt").write_bytes(r.content)
    items, _ = read_sequences(tmp_path / "regen.txt", "txt")
    assert len(items) == sum(job["result"]["rows"].values())
    assert all(i.startswith("i") for row in items for i in row)  # original ids, not indices


def test_restart_reuses_the_local_key(tmp_path: Path) -> None:
    first = _start(tmp_path, free_port(), "--no-worker")
    key = first.keys["local"]
    first.stop()
    second = _start(tmp_path, free_port(), "--no-worker")
    try:
        assert second.keys["local"] == key
        with second.client("local") as c:
            assert c.get("/jobs").status_code == 200
    finally:
        second.stop()
