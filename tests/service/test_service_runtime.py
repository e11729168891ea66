"""Job delivery bookkeeping (workers.runtime) on a real SQLite database:
leases turn duplicate deliveries away, retries are bounded, cancel and the
soft time limit stop a job through its progress callback."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest

from app import migrate
from app.core.db import make_engine, make_sessionmaker, session_scope
from app.core.orm import Artifact, Dataset, Job, Principal, utcnow
from app.core.settings import Settings
from app.core.storage import ArtifactStore, StoredObject
from models.progress import Cancelled, ProgressEvent
from workers.runtime import JobRun, JobTimeLimit, LeaseLost, WorkerContext


@pytest.fixture
def ctx(tmp_path: Path) -> WorkerContext:
    settings = Settings(
        data_dir=tmp_path,
        lease_s=30,
        progress_interval_s=0,
        soft_time_limit_s=1,
        hard_time_limit_s=60,
        visibility_timeout_s=120,
    )
    migrate.upgrade(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    return WorkerContext(
        settings, make_sessionmaker(engine), ArtifactStore(settings.resolved_storage_url)
    )


def _job(ctx: WorkerContext, max_attempts: int = 2) -> str:
    with session_scope(ctx.sessions) as s:
        p = Principal(name=f"p{time.monotonic_ns()}")
        s.add(p)
        s.flush()
        ds = Dataset(
            owner_id=p.id,
            name="d",
            filename="d.csv",
            status="ready",
            options={},
            size_bytes=1,
            sha256="0" * 64,
        )
        s.add(ds)
        s.flush()
        job = Job(
            owner_id=p.id,
            dataset_id=ds.id,
            kind="regenerate",
            queue="cpu",
            parameters={},
            progress={},
            max_attempts=max_attempts,
        )
        s.add(job)
        s.flush()
        return job.id


def _row(ctx: WorkerContext, job_id: str) -> Job:
    with ctx.sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None
        s.expunge(job)
        return job


def _expire_lease(ctx: WorkerContext, job_id: str) -> None:
    with session_scope(ctx.sessions) as s:
        s.get(Job, job_id).lease_expires_at = utcnow() - timedelta(seconds=1)


def test_duplicate_delivery_is_turned_away_while_the_lease_holds(ctx: WorkerContext) -> None:
    job_id = _job(ctx)
    first = JobRun(ctx, job_id, "worker-a")
    assert first.claim() is not None
    assert JobRun(ctx, job_id, "worker-b").claim() is None
    row = _row(ctx, job_id)
    assert (row.state, row.lease_owner, row.attempts) == ("running", "worker-a", 1)
    first.release()


def test_expired_lease_is_reclaimed_and_attempts_are_bounded(ctx: WorkerContext) -> None:
    job_id = _job(ctx, max_attempts=2)
    a = JobRun(ctx, job_id, "a")
    assert a.claim() is not None
    a.release()  # worker "dies": no more heartbeats
    _expire_lease(ctx, job_id)
    b = JobRun(ctx, job_id, "b")
    claimed = b.claim()
    assert claimed is not None and claimed.attempt == 2
    # the old owner can no longer write progress: it learns it lost the job
    with pytest.raises(LeaseLost):
        a.progress(ProgressEvent("mine", 1, 2))
    b.release()
    _expire_lease(ctx, job_id)
    assert JobRun(ctx, job_id, "c").claim() is None  # third delivery > max_attempts
    row = _row(ctx, job_id)
    assert row.state == "failed" and row.error["type"] == "TooManyAttempts"
    assert "gave up after 2 attempts" in row.error["message"]


def test_progress_is_recorded_and_cancel_raises_at_the_next_step(ctx: WorkerContext) -> None:
    job_id = _job(ctx)
    run = JobRun(ctx, job_id, "w")
    run.claim()
    run.progress(ProgressEvent("mine", 3, 10))
    row = _row(ctx, job_id)
    assert row.stage == "mine" and row.progress["stages"]["mine"]["done"] == 3
    with session_scope(ctx.sessions) as s:
        s.get(Job, job_id).cancel_requested = True
    with pytest.raises(Cancelled):
        run.progress(ProgressEvent("mine", 4, 10))
    run.cancel()
    row = _row(ctx, job_id)
    assert row.state == "cancelled" and row.lease_owner is None and row.finished_at is not None


def test_soft_time_limit_stops_the_job(ctx: WorkerContext) -> None:
    job_id = _job(ctx)
    run = JobRun(ctx, job_id, "w")
    run.claim()
    time.sleep(1.3)
    with pytest.raises(JobTimeLimit, match="soft time limit of 1 s"):
        run.progress(ProgressEvent("train", 1, 2))
    run.fail(JobTimeLimit("soft time limit"))
    assert _row(ctx, job_id).state == "failed"


def test_success_replaces_artifacts_of_an_earlier_attempt(ctx: WorkerContext) -> None:
    job_id = _job(ctx)
    with session_scope(ctx.sessions) as s:  # rows an earlier, lost attempt left
        s.add(
            Artifact(
                job_id=job_id,
                kind="checkpoint",
                name="output/old.safetensors",
                uri="x",
                size=1,
                sha256="0" * 64,
            )
        )
    run = JobRun(ctx, job_id, "w")
    run.claim()
    new = StoredObject(f"jobs/{job_id}/output/model.safetensors", "file:///m", 5, "1" * 64)
    assert run.succeed({"rows": 3}, [("checkpoint", new)])
    with ctx.sessions() as s:
        names = [a.name for a in s.query(Artifact).filter_by(job_id=job_id)]
    assert names == ["output/model.safetensors"]
    row = _row(ctx, job_id)
    assert row.state == "succeeded" and row.result == {"rows": 3}
    # a late duplicate cannot touch a finished job
    assert JobRun(ctx, job_id, "late").claim() is None
