"""Celery tasks: thin wrappers that load inputs by id, call the ML core with a
progress callback bound to the job row, and store outputs atomically.

Each task takes only a job id. What it does per kind lives in the small
``_validate`` / ``_regenerate`` / ``_train`` / ``_compare`` functions; the
delivery bookkeeping (lease, retries, cancel, time limits) is in
:mod:`workers.runtime`.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_ready, worker_shutdown
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from app.datasets import (
    loaded_dataset,
    mark_invalid,
    mark_ready,
    prepared_prefix,
    raw_key,
    run_prepare,
    summarize,
)
from app.db import session_scope
from app.jobstate import TASK_NAMES
from app.orm import Dataset
from app.storage import StoredObject
from models.data.errors import DataError
from models.progress import Cancelled
from workers.celery_app import make_celery
from workers.runtime import (
    ClaimedJob,
    JobRun,
    JobTimeLimit,
    LeaseLost,
    get_context,
    requeue_stale_jobs,
    scratch_dir,
)

log = logging.getLogger(__name__)

celery_app = make_celery()

# Errors worth another delivery: the database or broker blinked. Anything
# else (bad parameters, bad data, a bug) fails the job at once with its message.
TRANSIENT = (OperationalError, InterfaceError, ConnectionError, TimeoutError)
RESULT_MAX_BYTES = 64 * 1024
RESULT_ENTRY_MAX_BYTES = 8 * 1024


@dataclass
class Outcome:
    result: dict[str, Any]
    output_dir: Path | None = None  # uploaded to jobs/<id>/output
    finalize: Callable[[Session], None] | None = None  # runs in the success transaction


def artifact_kind(name: str) -> str:
    base = Path(name).name
    if name.startswith("regenerator/") or base.endswith(".safetensors"):
        return "checkpoint"
    return {
        "config.json": "config",
        "report.json": "report",
        "report.html": "report_html",
        "topk.parquet": "topk",
        "regenerated.npz": "regenerated",
        "stats.json": "stats",
    }.get(base, "file")


def _trim_result(result: dict[str, Any]) -> dict[str, Any]:
    """Keep the job row small: bulky entries (training history, per-row
    weights) are left out of it; the full document stays downloadable."""
    doc = json.loads(json.dumps(result, default=str))
    if len(json.dumps(doc)) <= RESULT_MAX_BYTES:
        return doc
    kept = {k: v for k, v in doc.items() if len(json.dumps(v)) <= RESULT_ENTRY_MAX_BYTES}
    kept["omitted"] = sorted(set(doc) - set(kept))
    return kept


# -- per-kind work -----------------------------------------------------------------
def _validate(run: JobRun, job: ClaimedJob, scratch: Path) -> Outcome:
    store = run.ctx.store
    with session_scope(run.ctx.sessions) as session:
        ds = session.get(Dataset, job.dataset_id)
        if ds is None:
            raise LookupError(f"dataset {job.dataset_id} no longer exists")
        filename, options, name = ds.filename, dict(ds.options), ds.name
    with store.local_file(raw_key(job.dataset_id, filename)) as raw:
        prepared = run_prepare(raw, options, name, run.progress)
    prepared.save(scratch / "prepared")
    stored = store.put_dir(scratch / "prepared", prepared_prefix(job.dataset_id))

    def finalize(session: Session) -> None:
        mark_ready(session, job.dataset_id, prepared, stored)

    return Outcome(summarize(prepared), None, finalize)


def _validation_stopped(dataset_id: str) -> Callable[[Session, str], None]:
    def on_stop(session: Session, message: str) -> None:
        mark_invalid(session, get_context().store, dataset_id, message)

    return on_stop


def _regeneration_rows(run: JobRun, job: ClaimedJob):
    from models.data.sequences import load_rows

    if job.source_job_id is None:
        raise LookupError("this job needs a regeneration but none is linked")
    with run.ctx.store.local_file(f"jobs/{job.source_job_id}/output/regenerated.npz") as path:
        return load_rows(path)


def _regenerate(run: JobRun, job: ClaimedJob, scratch: Path) -> Outcome:
    from models.pipeline import RegenerationConfig, regenerate

    config = RegenerationConfig.from_dict(job.parameters.get("config", {}))
    with loaded_dataset(run.ctx.store, job.dataset_id) as dataset:
        outcome = regenerate(dataset, config, scratch / "output", run.progress)
    return Outcome(dict(outcome.stats), scratch / "output")


def _train_config(job: ClaimedJob, **fixed: Any):
    from models.pipeline import TrainJobConfig

    return TrainJobConfig.from_dict({**job.parameters.get("config", {}), **fixed})


def _train(run: JobRun, job: ClaimedJob, scratch: Path) -> Outcome:
    from models.pipeline import train

    p = job.parameters
    config = _train_config(job, model=p["model"], personalize=bool(p["personalize"]))
    rows = _regeneration_rows(run, job) if p["data"] == "regenerated" else None
    with loaded_dataset(run.ctx.store, job.dataset_id) as dataset:
        outcome = train(dataset, rows, config, scratch / "output", run.progress)
    return Outcome(dict(outcome.report), scratch / "output")


def _compare(run: JobRun, job: ClaimedJob, scratch: Path) -> Outcome:
    from models.pipeline import compare

    p = job.parameters
    config = _train_config(job)
    rows = _regeneration_rows(run, job) if job.source_job_id is not None else None
    with loaded_dataset(run.ctx.store, job.dataset_id) as dataset:
        outcome = compare(
            dataset,
            rows,
            list(p["models"]),
            list(p["variants"]),
            config,
            scratch / "output",
            run.progress,
        )
    return Outcome(dict(outcome.report), scratch / "output")


HANDLERS: dict[str, Callable[[JobRun, ClaimedJob, Path], Outcome]] = {
    "validate": _validate,
    "regenerate": _regenerate,
    "train": _train,
    "compare": _compare,
}


# -- one delivery ------------------------------------------------------------------
def execute(task: Task, job_id: str) -> str:
    ctx = get_context()
    owner = f"{task.request.hostname or 'worker'}:{task.request.id or '-'}"
    run = JobRun(ctx, job_id, owner)
    job = run.claim()
    if job is None:
        return "skipped"
    on_stop = _validation_stopped(job.dataset_id) if job.kind == "validate" else None
    scratch = scratch_dir(ctx.settings, job.id, job.attempt)
    log.info("job %s (%s): attempt %d started", job.id, job.kind, job.attempt)
    try:
        outcome = HANDLERS[job.kind](run, job, scratch)
        stored: list[tuple[str, StoredObject]] = []
        if outcome.output_dir is not None:
            prefix = f"jobs/{job.id}/output"
            objects = ctx.store.put_dir(outcome.output_dir, prefix)
            stored = [(artifact_kind(o.key[len(prefix) + 1 :]), o) for o in objects]
        ok = run.succeed(_trim_result(outcome.result), stored, outcome.finalize)
        return "succeeded" if ok else "lost"
    except Cancelled:
        run.cancel(on_stop)
        log.info("job %s: cancelled", job.id)
        return "cancelled"
    except LeaseLost:
        run.release()
        return "lost"
    except TRANSIENT as exc:
        if job.attempt < job.max_attempts:
            log.warning("job %s: transient error, retrying: %s", job.id, exc)
            run.requeue(exc)
            raise task.retry(exc=exc, countdown=ctx.settings.retry_backoff_s * job.attempt) from exc
        run.fail(exc, on_stop)
        return "failed"
    except (JobTimeLimit, SoftTimeLimitExceeded, DataError) as exc:
        log.info("job %s failed: %s", job.id, exc)  # the user's data or limits, not a bug
        run.fail(exc, on_stop)
        return "failed"
    except Exception as exc:
        log.exception("job %s failed", job.id)
        run.fail(exc, on_stop)
        return "failed"
    finally:
        shutil.rmtree(scratch.parent, ignore_errors=True)


_TASK_OPTIONS: dict[str, Any] = dict(
    bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None, ignore_result=True
)


@celery_app.task(name=TASK_NAMES["validate"], **_TASK_OPTIONS)
def validate_dataset(self: Task, job_id: str) -> str:
    return execute(self, job_id)


@celery_app.task(name=TASK_NAMES["regenerate"], **_TASK_OPTIONS)
def regenerate_task(self: Task, job_id: str) -> str:
    return execute(self, job_id)


@celery_app.task(name=TASK_NAMES["train"], **_TASK_OPTIONS)
def train_task(self: Task, job_id: str) -> str:
    return execute(self, job_id)


@celery_app.task(name=TASK_NAMES["compare"], **_TASK_OPTIONS)
def compare_task(self: Task, job_id: str) -> str:
    return execute(self, job_id)


def recover_stale_jobs() -> int:
    """Re-enqueue jobs whose worker died (their lease expired). A duplicate
    message is harmless: the lease lets only one delivery run."""
    ctx = get_context()
    with session_scope(ctx.sessions) as session:
        stale = requeue_stale_jobs(session)
    for job_id, kind, queue in stale:
        celery_app.send_task(TASK_NAMES[kind], args=[job_id], queue=queue)
        log.warning("job %s: its worker was lost; re-enqueued", job_id)
    return len(stale)


def _recovery_loop(stop: threading.Event, interval: float) -> None:
    while True:
        try:
            recover_stale_jobs()
        except Exception:  # the database may be briefly away; try again next round
            log.warning("stale-job scan failed", exc_info=True)
        if stop.wait(interval):
            return


_recovery_stop = threading.Event()


@worker_ready.connect
def _start_recovery(sender=None, **_: Any) -> None:
    interval = max(2.0, get_context().settings.lease_s)
    threading.Thread(
        target=_recovery_loop,
        args=(_recovery_stop, interval),
        name="stale-job-recovery",
        daemon=True,
    ).start()


@worker_shutdown.connect
def _stop_recovery(sender=None, **_: Any) -> None:
    _recovery_stop.set()
