"""The service's dependencies failing under it: the API process restarted,
Redis restarted (without persistence, so its messages are lost), the
service's PostgreSQL connections terminated, and the artifact store full.
Real processes throughout: uvicorn API, Celery worker, PostgreSQL, a private
redis-server, and a tiny tmpfs as the store where one can be mounted."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from reliability_harness import (
    FAULTS_DIR,
    RedisServer,
    Service,
    files_under,
    finished,
    fresh_database,
    make_service,
    show_logs_on_failure,
    terminate_backends,
    wait_for,
)

pytestmark = pytest.mark.service

TRAIN = {"epochs": 25, "patience": 25, "device": "cpu", "topk": 10}
STORE_BYTES = 16 * 1024 * 1024


class FullDisk:
    """Makes the artifact store run out of space: a real tmpfs filled to the
    brim when this process may mount one (root), else the fault injected by
    faults/sitecustomize.py through a flag file."""

    def __init__(self, root: Path) -> None:
        self.store = root / "store"
        self.store.mkdir()
        self.flag = root / "storage-full"
        self.mounted = (
            os.geteuid() == 0
            and subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={STORE_BYTES}", "tmpfs", str(self.store)],
                capture_output=True,
            ).returncode
            == 0
        )
        self.filler = root / "filler-not-used"

    def env(self) -> dict[str, str]:
        if self.mounted:
            return {}
        path = os.pathsep.join(filter(None, [str(FAULTS_DIR), os.environ.get("PYTHONPATH")]))
        return {"PYTHONPATH": path, "DR4SR_TEST_STORAGE_FULL_FLAG": str(self.flag)}

    def fill(self) -> None:
        if not self.mounted:
            self.flag.touch()
            return
        self.filler = self.store / "filler"
        block = b"\0" * 65536
        with open(self.filler, "wb") as f:
            try:
                while True:
                    f.write(block)
                    f.flush()
            except OSError:
                pass
        free = os.statvfs(self.store)
        assert free.f_bavail * free.f_frsize < 65536

    def free(self) -> None:
        self.flag.unlink(missing_ok=True)
        if self.mounted:
            self.filler.unlink(missing_ok=True)

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.store)], check=False)


@pytest.fixture(scope="module")
def redis(tmp_path_factory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("rel-redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def disk(tmp_path_factory) -> Iterator[FullDisk]:
    d = FullDisk(tmp_path_factory.mktemp("rel-disk"))
    try:
        yield d
    finally:
        d.close()


@pytest.fixture(scope="module")
def service(tmp_path_factory, redis: RedisServer, disk: FullDisk) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("rel-infra")
    with fresh_database() as (url, name):
        s = make_service(root, url, name, redis.url, storage_dir=disk.store, extra_env=disk.env())
        try:
            yield s
        finally:
            s.stop()


@pytest.fixture(autouse=True)
def _logs(request, service: Service):
    yield
    show_logs_on_failure(request, service)


@pytest.fixture(scope="module")
def dataset(service: Service, tiny_logs: dict[str, Path]) -> str:
    with service.client() as c, open(tiny_logs["small"], "rb") as f:
        r = c.post("/datasets", files={"file": ("small.csv", f)})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _train(c: httpx.Client, dataset: str, **params) -> str:
    r = c.post("/jobs/train", json={"dataset_id": dataset, "parameters": {**TRAIN, **params}})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def _running(job: dict) -> bool:
    return job["state"] == "running" and "valid" in job["progress"]["stages"]


def test_api_restart_loses_nothing_and_polling_resumes(service: Service, dataset: str) -> None:
    with service.client() as c:
        job_id = _train(c, dataset)
        before = wait_for(c, job_id, _running, timeout=60, what="running")
        service.kill(service.api)
        with pytest.raises(httpx.TransportError):
            c.get(f"/jobs/{job_id}")
        time.sleep(1.0)  # the worker goes on without the API
        service.start_api()
        job = wait_for(c, job_id, finished, timeout=90, what="finished")  # the same client
        assert job["state"] == "succeeded", job
        assert job["attempts"] == 1 and job["created_at"] == before["created_at"]
        assert c.get("/jobs", params={"state": "succeeded"}).json()["total"] >= 1


def test_redis_restart_with_a_job_running_and_one_queued(
    service: Service, dataset: str, redis: RedisServer
) -> None:
    with service.client() as c:
        running = _train(c, dataset)
        wait_for(c, running, _running, timeout=60, what="running")
        queued = _train(c, dataset, epochs=3)  # waits behind it: the worker runs one at a time
        assert c.get(f"/jobs/{queued}").json()["state"] == "queued"

        redis.stop()  # both messages die with it (no persistence)
        r = c.post("/jobs/train", json={"dataset_id": dataset, "parameters": TRAIN})
        assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable", r.text
        assert c.get(f"/jobs/{running}").status_code == 200  # the job table still answers
        ready = httpx.get(f"{service.base_url}/readyz")
        assert ready.status_code == 503 and not ready.json()["checks"]["broker"]["ok"]
        redis.start()

        # submitting works again without restarting anything
        after = _train(c, dataset, epochs=2)
        jobs = {
            j: wait_for(c, j, finished, timeout=120, what="finished")
            for j in (running, queued, after)
        }
    for job in jobs.values():
        assert job["state"] == "succeeded", job
        assert job["attempts"] == 1, job
    assert "the broker restarted" in service.worker_logs()
    assert f"job {queued}: still queued, message re-sent" in service.worker_logs()


def test_terminated_database_connections_are_replaced(service: Service, dataset: str) -> None:
    statuses: list[tuple[int, dict]] = []
    stop = threading.Event()

    def poll(job_id: str) -> None:
        with service.client() as c:
            while not stop.is_set():
                for path in (f"/jobs/{job_id}", "/datasets"):
                    try:
                        r = c.get(path)
                        statuses.append((r.status_code, r.json() if r.status_code != 200 else {}))
                    except Exception as exc:  # recorded: the assertions below show it
                        statuses.append((0, {"exception": repr(exc)}))

    with service.client() as c:
        job_id = _train(c, dataset)
        wait_for(c, job_id, _running, timeout=60, what="running")
        poller = threading.Thread(target=poll, args=(job_id,))
        poller.start()
        cut = 0
        try:
            for _ in range(10):
                cut += terminate_backends(service.db_name)
                time.sleep(0.3)
        finally:
            stop.set()
            poller.join()
        assert cut > 0  # the API's and the worker's connections were really cut
        job = wait_for(c, job_id, finished, timeout=90, what="finished")
        # after the storm, every request succeeds again
        assert all(c.get(f"/jobs/{job_id}").status_code == 200 for _ in range(20))
    assert job["state"] == "succeeded" and job["attempts"] == 1, job
    assert len(statuses) > 20
    unavailable = sum(1 for status, _ in statuses if status == 503)
    print(f"pg storm: {cut} connections cut, {len(statuses)} requests, {unavailable} x 503")
    for status, body in statuses:  # at worst a retryable 503 in the common shape, never a 500
        assert status == 200 or (
            status == 503 and body["error"]["code"] == "database_unavailable"
        ), (status, body)


def test_full_store_fails_the_job_clearly_and_leaves_no_partial_artifact(
    service: Service, dataset: str, disk: FullDisk, tiny_logs: dict[str, Path]
) -> None:
    with service.client() as c:
        total = c.get("/datasets").json()["total"]
        disk.fill()
        try:
            job_id = _train(c, dataset, epochs=2)
            job = wait_for(c, job_id, finished, timeout=90, what="finished")
            with open(tiny_logs["small"], "rb") as f:
                r = c.post("/datasets", files={"file": ("small.csv", f)})
        finally:
            disk.free()
        assert job["state"] == "failed", job
        assert job["error"]["type"] == "StorageError" and job["attempts"] == 1, job["error"]
        assert "No space left on device" in job["error"]["message"]
        assert f"jobs/{job_id}/output" in job["error"]["message"]
        assert files_under(service.store_dir / "jobs" / job_id) == []  # nothing half-written
        assert_full = r.json()["error"]
        assert r.status_code == 507 and assert_full["code"] == "insufficient_storage", r.text
        assert c.get("/datasets").json()["total"] == total  # nothing stored

        # space is back: the same upload and job go through, no restart needed
        with open(tiny_logs["small"], "rb") as f:
            assert c.post("/datasets", files={"file": ("small.csv", f)}).status_code == 201
        again = wait_for(c, _train(c, dataset, epochs=2), finished, timeout=90)
        assert again["state"] == "succeeded", again
