"""A worker SIGKILLed in the middle of a training job and of a
regeneration job, and one task delivered twice, against the production
topology (uvicorn API, two Celery workers, PostgreSQL, a private Redis).
The embedded topology's regeneration crash (SQLite, filesystem broker, the
worker restarted by `dr4sr serve`) is
tests/service/test_service_embedded.py::test_a_job_survives_its_worker_dying."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from reliability_harness import (
    RedisServer,
    Service,
    artifact_names,
    files_under,
    finished,
    fresh_database,
    make_service,
    show_logs_on_failure,
    wait_for,
)

pytestmark = pytest.mark.service

EPOCHS = 30  # ~0.1 s each on the tiny log: long enough to kill one mid-way
TRAIN = {"epochs": EPOCHS, "patience": EPOCHS, "device": "cpu", "topk": 10, "seed": 3}
TINY_REGEN = {
    "pretrain_epochs": 0,
    "regenerator_epochs": 6,
    "max_pairs": 3,
    "device": "cpu",
    "regenerator": {
        "ffn_dim": 32,
        "cond_ffn_dim": 32,
        "enc_layers": 1,
        "dec_layers": 1,
        "cond_layers": 1,
    },
}


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("rel-worker")
    redis = RedisServer(root / "redis").start()
    try:
        with fresh_database() as (url, name):
            # two workers: one can die while the other carries on
            s = make_service(root, url, name, redis.url, workers=2)
            try:
                yield s
            finally:
                s.stop()
    finally:
        redis.stop()


@pytest.fixture
def dataset(service: Service, tiny_logs: dict[str, Path]) -> str:
    with service.client() as c, open(tiny_logs["small"], "rb") as f:
        r = c.post("/datasets", files={"file": ("small.csv", f)})
    assert r.status_code == 201, r.text
    return r.json()["id"]


@pytest.fixture(autouse=True)
def _logs(request, service: Service):
    yield
    show_logs_on_failure(request, service)


def _saved_epoch(resume: Path) -> int | None:
    """Epochs completed by the checkpoint stored for a job (None: none yet)."""
    try:
        return int(json.loads(resume.read_text())["run"]["epoch"])
    except (FileNotFoundError, ValueError):  # not there yet, or being swapped in
        return None


def _running(service: Service, job_id: str, kind: str = "train"):
    """The worker whose log shows it started ``job_id``."""
    (worker,) = [
        w for w in service.workers if f"job {job_id} ({kind}): attempt" in w.log.read_text()
    ]
    return worker


def _one_set_of_artifacts(service: Service, job_id: str) -> list[str]:
    """The job's stored files are exactly its artifact rows: no second set,
    no staging folder, no leftover resume checkpoint."""
    stored = files_under(service.store_dir / "jobs" / job_id)
    rows = artifact_names(service.env["DR4SR_DATABASE_URL"], job_id)
    assert stored == rows, (stored, rows)
    assert all(name.startswith("output/") for name in stored), stored
    return stored


def _two_workers(service: Service) -> None:
    """One to kill and one to carry on (an earlier test may have killed one)."""
    while len(service.workers) < 2:
        service.wait_worker_ready(service.start_worker())


def test_a_duplicate_delivery_is_turned_away_by_the_lease(service: Service, dataset: str) -> None:
    from app.core.broker import make_celery
    from app.core.jobstate import TASK_NAMES
    from app.core.settings import Settings

    _two_workers(service)
    slow = {**TRAIN, "epochs": 25, "patience": 25}
    with service.client() as c:
        r = c.post("/jobs/train", json={"dataset_id": dataset, "parameters": slow})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        wait_for(c, job_id, lambda j: j["state"] == "running", timeout=60, what="running")

        # the same task again, as a broker redelivery would send it
        celery = make_celery(Settings(broker_url=service.env["DR4SR_BROKER_URL"]))
        celery.send_task(TASK_NAMES["train"], args=[job_id], queue="cpu")
        deadline = time.monotonic() + 60
        turned_away = f"job {job_id}: not claimable"
        while turned_away not in service.worker_logs():
            assert time.monotonic() < deadline, service.logs()
            time.sleep(0.2)
        running = c.get(f"/jobs/{job_id}").json()
        assert running["attempts"] == 1

        job = wait_for(c, job_id, finished, timeout=120, what="finished")
    assert job["state"] == "succeeded", job
    assert job["attempts"] == 1 and job["result"]["resumed_from_epoch"] == 0
    assert service.worker_logs().count(f"job {job_id} (train): attempt") == 1
    _one_set_of_artifacts(service, job_id)


def test_killed_training_job_resumes_from_its_checkpoint(service: Service, dataset: str) -> None:
    _two_workers(service)
    with service.client() as c:
        r = c.post("/jobs/train", json={"dataset_id": dataset, "parameters": TRAIN})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        resume = service.store_dir / "jobs" / job_id / "resume" / "last.json"

        def three_epochs_saved(job: dict) -> bool:
            assert job["state"] in ("queued", "running"), job
            return (_saved_epoch(resume) or 0) >= 3

        wait_for(c, job_id, three_epochs_saved, timeout=90, what="saved 3 epochs")
        victim = _running(service, job_id)
        service.kill(victim)  # SIGKILL: no cleanup, no ack, the lease just stops renewing
        saved = _saved_epoch(resume)  # the checkpoint outlives the worker, in the store
        assert saved is not None and saved < EPOCHS

        # the surviving worker's recovery scan notices the expired lease and re-enqueues
        (survivor,) = service.workers
        job = wait_for(c, job_id, finished, timeout=120, what="finished")
        assert job["state"] == "succeeded", job
        assert job["attempts"] == 2
        # resumed where the first attempt's last saved checkpoint left off, not from scratch
        assert job["result"]["resumed_from_epoch"] == saved >= 3
        assert "resume" in job["progress"]["stages"]
        assert "resumed after epoch" in job["progress"]["stages"]["resume"]["message"]

        report = c.get(f"/jobs/{job_id}/report").json()
        # one uninterrupted history: every epoch once, in order
        assert [h["epoch"] for h in report["history"]] == list(range(EPOCHS))
        assert report["epochs_run"] == EPOCHS
        assert c.get(f"/jobs/{job_id}/checkpoint").status_code == 200
    stored = _one_set_of_artifacts(service, job_id)
    assert {"output/model.safetensors", "output/report.json", "output/topk.parquet"} <= set(stored)
    assert "attempt 1 started" in victim.log.read_text()
    assert f"job {job_id}: resuming after epoch {saved}" in survivor.log.read_text()


def test_killed_regeneration_is_redelivered_and_finishes(service: Service, dataset: str) -> None:
    _two_workers(service)
    with service.client() as c:
        r = c.post("/jobs/regenerate", json={"dataset_id": dataset, "parameters": TINY_REGEN})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]

        def regenerating(job: dict) -> bool:
            assert job["state"] in ("queued", "running"), job
            return "regenerator" in job["progress"]["stages"]

        wait_for(c, job_id, regenerating, timeout=90, what="in the regenerator stage")
        victim = _running(service, job_id, "regenerate")
        service.kill(victim)  # SIGKILL mid-regeneration: no ack, no cleanup
        (survivor,) = service.workers
        job = wait_for(c, job_id, finished, timeout=120, what="finished")
        assert job["state"] == "succeeded", job
        assert job["attempts"] == 2, job  # the killed attempt is counted
        stored = _one_set_of_artifacts(service, job_id)
        assert "output/regenerated.npz" in stored
        rows = sum(job["result"]["rows"].values())
        r = c.get(f"/datasets/{dataset}/regenerated", params={"job": job_id, "format": "txt"})
        assert r.status_code == 200, r.text
        # the complete dataset of the second attempt, nothing duplicated
        assert rows > 0 and len(r.text.splitlines()) == rows, (rows, r.text[:200])
    assert f"job {job_id} (regenerate): attempt 1 started" in victim.log.read_text()
    assert f"job {job_id} (regenerate): attempt 2 started" in survivor.log.read_text()


def test_a_compare_redoes_only_the_train_job_whose_worker_died(
    service: Service, dataset: str
) -> None:
    """A compare's train jobs are separate jobs: killing the worker of one
    of them redoes that one (from its checkpoint) and nothing else, and the
    compare still aggregates all of them."""
    _two_workers(service)
    epochs = 60
    train = {**TRAIN, "epochs": epochs, "patience": epochs}
    del train["seed"]  # the seeds field sets each train job's
    body = {"dataset_id": dataset, "models": ["sasrec"], "variants": ["original"],
            "seeds": [1, 2, 3], "parameters": train}
    with service.client() as c:
        r = c.post("/jobs/compare", json=body)
        assert r.status_code == 202, r.text
        parent_id = r.json()["id"]
        ids = [k["job_id"] for k in r.json()["parameters"]["children"]]
        resume = {i: service.store_dir / "jobs" / i / "resume" / "last.json" for i in ids}

        def a_child_saved_3_epochs(job: dict) -> bool:
            assert job["state"] == "running", job  # the parent waits for its children
            return any((_saved_epoch(path) or 0) >= 3 for path in resume.values())

        wait_for(c, parent_id, a_child_saved_3_epochs, timeout=90, what="a child at epoch 3")
        victim_id = next(i for i in ids if (_saved_epoch(resume[i]) or 0) >= 3)
        victim = _running(service, victim_id)
        service.kill(victim)
        saved = _saved_epoch(resume[victim_id])
        assert saved is not None and saved < epochs

        parent = wait_for(c, parent_id, finished, timeout=240, what="compare finished")
        assert parent["state"] == "succeeded", parent
        kids = {i: c.get(f"/jobs/{i}").json() for i in ids}
        report = c.get(f"/jobs/{parent_id}/report").json()
    assert all(k["state"] == "succeeded" for k in kids.values()), kids
    assert kids[victim_id]["attempts"] == 2
    assert kids[victim_id]["result"]["resumed_from_epoch"] == saved >= 3
    others = [i for i in ids if i != victim_id]
    assert [kids[i]["attempts"] for i in others] == [1, 1]
    assert [kids[i]["result"]["resumed_from_epoch"] for i in others] == [0, 0]
    logs = service.worker_logs()
    for i in others:  # each other train job ran once, on whichever worker took it
        assert logs.count(f"job {i} (train): attempt") == 1, i
    assert logs.count(f"job {victim_id} (train): attempt") == 2
    assert [run["job_id"] for run in report["runs"]] == ids
    assert [run["seed"] for run in report["runs"]] == [1, 2, 3]
    assert report["summary"][0]["seeds"] == 3
