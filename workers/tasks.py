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
from celery.signals import worker_init, worker_ready, worker_shutdown
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from app.core.broker import make_celery
from app.core.datasets import (
    loaded_dataset,
    mark_invalid,
    mark_ready,
    prepared_prefix,
    raw_key,
    run_prepare,
    summarize,
)
from app.core.db import session_scope
from app.core.families import (
    child_label,
    children,
    note_child_finished,
    pending_children,
    ready_parents,
    released_by,
    scorer_pending,
)
from app.core.jobstate import TASK_NAMES
from app.core.orm import Dataset, Job
from app.core.storage import StorageError, StoredObject, storage_full
from models.data.errors import DataError
from models.progress import Cancelled, ProgressEvent
from workers.resumable import (
    CheckpointSync,
    drop_checkpoint,
    fetch_checkpoint,
    resume_prefix,
)
from workers.runtime import (
    ClaimedJob,
    JobRun,
    JobTimeLimit,
    LeaseLost,
    get_context,
    requeue_stale_jobs,
    requeue_waiting_jobs,
    scratch_dir,
)

log = logging.getLogger(__name__)

celery_app = make_celery()

# Errors worth another delivery: the database or broker blinked. Anything
# else (bad parameters, bad data, a bug) fails the job at once with its message.
TRANSIENT = (OperationalError, InterfaceError, ConnectionError, TimeoutError)
RESULT_MAX_BYTES = 64 * 1024
RESULT_ENTRY_MAX_BYTES = 8 * 1024


def is_transient(exc: BaseException) -> bool:
    """A blink worth another delivery; a full disk is not one."""
    if isinstance(exc, TRANSIENT):
        return True
    return (
        isinstance(exc, StorageError)
        and isinstance(exc.__cause__, ConnectionError | TimeoutError)
        and not storage_full(exc)
    )


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
    from models.config import RegenerationConfig
    from models.pipeline import regenerate

    config = RegenerationConfig.model_validate(job.parameters.get("config", {}))
    with loaded_dataset(run.ctx.store, job.dataset_id) as dataset:
        outcome = regenerate(dataset, config, scratch / "output", run.progress)
    return Outcome(dict(outcome.stats), scratch / "output")


def _train_config(job: ClaimedJob, **fixed: Any):
    """The job's TrainJobConfig: its stored parameters (validated at submission
    with the same models) and the request's own fields."""
    from models.config import train_job_config

    return train_job_config(job.parameters.get("config", {}), **fixed)


def _train(run: JobRun, job: ClaimedJob, scratch: Path) -> Outcome:
    """Train, resuming from the checkpoint an earlier delivery left in the store
    (``pipeline.train`` checkpoints every epoch into ``checkpoint_dir`` and
    continues from what it finds there)."""
    from models.pipeline import train

    p = job.parameters
    config = _train_config(job, model=p["model"], personalize=bool(p["personalize"]))
    rows = _regeneration_rows(run, job) if p["data"] == "regenerated" else None
    store, settings = run.ctx.store, run.ctx.settings
    checkpoint = scratch / "checkpoint"
    resumed = fetch_checkpoint(store, job.id, checkpoint) or 0
    if resumed:
        log.info("job %s: resuming after epoch %d", job.id, resumed)
        run.progress(
            ProgressEvent(
                "resume",
                resumed,
                config.epochs,
                message=f"attempt {job.attempt} resumed after epoch {resumed}",
            )
        )
    sync = CheckpointSync(
        run.progress, checkpoint, store, resume_prefix(job.id), settings.checkpoint_sync_interval_s
    )
    scorer = None
    if p.get("scorer_job_id") and config.runs_loss_filter(config.personalize):
        scorer = _scorer_from_job(run, p["scorer_job_id"], scratch / "scorer", config.device)
    with loaded_dataset(store, job.dataset_id) as dataset:
        outcome = train(dataset, rows, config, scratch / "output", sync, checkpoint_dir=checkpoint,
                        scorer=scorer)
    return Outcome({**outcome.report, "resumed_from_epoch": resumed}, scratch / "output")


class ScorerUnavailable(Exception):
    """The original-arm job a loss-filtered train job scores with did not succeed."""


def _scorer_from_job(run: JobRun, scorer_id: str, folder: Path, device: str):
    """The trained model of the sibling original-arm job (the loss filter
    scores the regenerated rows with it, see :mod:`app.core.families`)."""
    from models.training_filter import Scorer

    with session_scope(run.ctx.sessions) as session:
        sibling = session.get(Job, scorer_id)
        state = None if sibling is None else sibling.state
    if state != "succeeded":
        raise ScorerUnavailable(
            f"the original-arm train job {scorer_id}, whose model scores the regenerated rows "
            f"(the loss filter, row_filter), ended {state or 'missing'}"
        )
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("model.safetensors", "config.json", "report.json"):
        with run.ctx.store.local_file(f"jobs/{scorer_id}/output/{name}") as path:
            shutil.copyfile(path, folder / name)
    return Scorer.from_folder(folder, device, job_id=scorer_id)


class ChildJobsFailed(Exception):
    """A compare job's train job ended without a result."""


def _compare(run: JobRun, job: ClaimedJob, scratch: Path) -> Outcome:
    """Aggregate the compare job's finished train jobs (its children, see
    :mod:`app.core.families`) into one report."""
    import numpy as np

    from models.comparison import PAIRED_METRIC, compare_report, run_entry
    from models.reports import write_report

    with session_scope(run.ctx.sessions) as session:
        kids = [(k.id, k.state, dict(k.parameters), k.error) for k in children(session, job.id)]
    # The report lists runs in the order the compare planned them (model x
    # seed x variant), not the rows' creation order: the children are
    # inserted together, their timestamps can tie, and the database then
    # falls back to the order of their random ids.
    planned = {k["job_id"]: n for n, k in enumerate(job.parameters.get("children", []))}
    kids.sort(key=lambda kid: planned.get(kid[0], len(planned)))
    if not kids:
        raise LookupError(f"compare job {job.id} has no train jobs")
    bad = [(i, state, p, err) for i, state, p, err in kids if state != "succeeded"]
    if bad:
        what = "; ".join(
            f"{i} ({child_label(p)}) {state}"
            + (f": {(err or {}).get('message')}" if state == "failed" else "")
            for i, state, p, err in bad
        )
        raise ChildJobsFailed(f"{len(bad)} of {len(kids)} train jobs did not succeed: {what}")
    runs: list[dict[str, Any]] = []
    per_user: dict[tuple[str, str, int], Any] = {}
    reports: dict[str, dict[str, Any]] = {}
    for n, (child_id, _, p, _) in enumerate(kids):
        run.progress(ProgressEvent("aggregate", n, len(kids), message=child_label(p)))
        prefix = f"jobs/{child_id}/output"
        with run.ctx.store.local_file(f"{prefix}/report.json") as path:
            report = json.loads(Path(path).read_text())
        with run.ctx.store.local_file(f"{prefix}/per_user.npz") as path, np.load(path) as scores:
            per_user[(p["model"], p["variant"], int(p["seed"]))] = np.asarray(scores[PAIRED_METRIC])
        runs.append(
            {**run_entry(p["model"], p["variant"], int(p["seed"]), report), "job_id": child_id}
        )
        reports.setdefault(p["variant"], report)
    first = next(iter(reports.values()))
    dataset = {k: v for k, v in first["dataset"].items() if k not in ("name", "training_rows")}
    regenerated = reports.get("dr4sr") or reports.get("dr4sr+") or {}
    p = job.parameters
    protocol = {k: v for k, v in first["protocol"].items() if k != "seed"}
    report = compare_report(
        dataset_name=first["dataset"]["name"],
        dataset_stats=dataset,
        protocol=protocol,
        parameters={k: v for k, v in first["parameters"].items() if k not in ("seed", "model")},
        models=p["models"],
        variants=p["variants"],
        seeds=p["seeds"],
        runs=runs,
        per_user=per_user,
        weights=reports.get("dr4sr+", {}).get("weights"),
        extra={k: regenerated[k] for k in ("composition", "warnings") if k in regenerated},
    )
    run.progress(ProgressEvent("aggregate", len(kids), len(kids)))
    write_report(scratch / "output", report)
    return Outcome(report, scratch / "output")


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

    def ends_here() -> None:
        """This delivery ends the job for good: the resume checkpoint a later
        delivery would have used goes *before* the outcome is recorded, so
        a finished job never shows one. (A crash in between only costs the
        redelivery its head start.) Kept on a lost lease or a retry."""
        if job.kind == "train":
            _quietly(drop_checkpoint, ctx.store, job.id)

    try:
        return _run_delivery(task, run, job, scratch, ends_here, on_stop)
    finally:
        shutil.rmtree(scratch.parent, ignore_errors=True)
        if job.parent_job_id is not None:
            _quietly(_child_ended, job.parent_job_id, job.id)


def _run_delivery(
    task: Task,
    run: JobRun,
    job: ClaimedJob,
    scratch: Path,
    ends_here: Callable[[], None],
    on_stop: Callable[[Session, str], None] | None,
) -> str:
    ctx = run.ctx
    try:
        outcome = HANDLERS[job.kind](run, job, scratch)
        stored: list[tuple[str, StoredObject]] = []
        if outcome.output_dir is not None:
            prefix = f"jobs/{job.id}/output"
            objects = ctx.store.put_dir(outcome.output_dir, prefix)
            stored = [(artifact_kind(o.key[len(prefix) + 1 :]), o) for o in objects]
        if run.lease_lost:
            raise LeaseLost(f"job {job.id} was taken over by another worker")
        ends_here()
        ok = run.succeed(_trim_result(outcome.result), stored, outcome.finalize)
        return "succeeded" if ok else "lost"
    except Cancelled:
        ends_here()
        run.cancel(on_stop)
        log.info("job %s: cancelled", job.id)
        return "cancelled"
    except LeaseLost:
        run.release()  # the job goes on elsewhere, with its checkpoint
        return "lost"
    except Exception as exc:
        if is_transient(exc) and job.attempt < job.max_attempts:
            log.warning("job %s: transient error, retrying: %s", job.id, exc)
            run.requeue(exc)
            raise task.retry(exc=exc, countdown=ctx.settings.retry_backoff_s * job.attempt) from exc
        if isinstance(exc, JobTimeLimit | SoftTimeLimitExceeded | DataError | ChildJobsFailed | ScorerUnavailable):
            log.info("job %s failed: %s", job.id, exc)  # the user's data or limits, not a bug
        elif storage_full(exc):
            log.error("job %s failed: the artifact store is full: %s", job.id, exc)
        else:
            log.exception("job %s failed", job.id)
        ends_here()
        run.fail(exc, on_stop)
        return "failed"


def _child_ended(parent_id: str, job_id: str) -> None:
    """A compare's train job ended (or went back to the queue): count it on
    the parent, send the siblings that waited for it as their scorer, and
    enqueue the parent once none is left to wait for."""
    ctx = get_context()
    with session_scope(ctx.sessions) as session:
        queue = note_child_finished(session, parent_id)
        released = released_by(session, parent_id, job_id)
    for kid_id, kid_queue in released:
        celery_app.send_task(TASK_NAMES["train"], args=[kid_id], queue=kid_queue)
        log.info("job %s: its scorer %s has ended; sent", kid_id, job_id)
    if queue is not None:
        celery_app.send_task(TASK_NAMES["compare"], args=[parent_id], queue=queue)
        log.info("job %s: its train jobs have finished; aggregating", parent_id)


def _quietly(fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except Exception:  # cleanup must not mask the job's outcome
        log.warning("cleanup %s failed", getattr(fn, "__name__", fn), exc_info=True)


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
    with session_scope(get_context().sessions) as session:
        scorer = scorer_pending(session, job_id)
    if scorer is not None:  # the scorer's end sends this job again (app.core.families)
        log.info("job %s: waits for %s, the original arm it scores with", job_id, scorer)
        return "waiting"
    return execute(self, job_id)


@celery_app.task(name=TASK_NAMES["compare"], **_TASK_OPTIONS)
def compare_task(self: Task, job_id: str) -> str:
    with session_scope(get_context().sessions) as session:
        waiting = pending_children(session, job_id)
    if waiting:  # an early message (a re-send): the last child to finish sends another
        log.info("job %s: %d train jobs still to finish", job_id, waiting)
        return "waiting"
    return execute(self, job_id)


def broker_identity() -> str:
    """What identifies the broker's current lifetime: Redis's ``run_id``
    changes on every restart (and a restart without persistence loses every
    queued message). The embedded filesystem transport keeps its messages."""
    with celery_app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=5)
        if conn.transport.driver_type == "redis":
            return str(conn.default_channel.client.info("server")["run_id"])
        return conn.transport.driver_type


class _BrokerWatch:
    def __init__(self) -> None:
        self.identity: str | None = None

    def changed(self) -> bool:
        """True on the first look (this worker cannot know what happened
        before it started) and whenever the broker restarted since the last."""
        current = broker_identity()
        changed = current != self.identity
        if changed and self.identity is not None:
            log.warning("the broker restarted (run_id %s -> %s)", self.identity, current)
        self.identity = current
        return changed


_broker_watch = _BrokerWatch()


def recover_stale_jobs(check_broker: bool = True) -> int:
    """Re-enqueue what the database says should run but may have no message:
    running jobs whose worker died (their lease expired), every queued job
    after a broker restart or at worker start, and queued jobs waiting longer
    than ``requeue_queued_after_s``. The job table is the truth and a
    duplicate message is harmless: the lease lets only one delivery run."""
    ctx = get_context()
    restarted = _broker_watch.changed() if check_broker else False
    with session_scope(ctx.sessions) as session:
        # waiting first: the stale jobs flipped to queued below are sent once, not twice
        waiting = requeue_waiting_jobs(
            session, 0.0 if restarted else ctx.settings.requeue_queued_after_s
        )
        stale = requeue_stale_jobs(session)
        parents = ready_parents(session)
    for job_id, kind, queue in stale:
        celery_app.send_task(TASK_NAMES[kind], args=[job_id], queue=queue)
        log.warning("job %s: its worker was lost; re-enqueued", job_id)
    for job_id, kind, queue in waiting:
        celery_app.send_task(TASK_NAMES[kind], args=[job_id], queue=queue)
        log.warning("job %s: still queued, message re-sent", job_id)
    for job_id, queue in parents:  # the worker that finished the last child died first
        celery_app.send_task(TASK_NAMES["compare"], args=[job_id], queue=queue)
        log.warning("job %s: its train jobs have finished; aggregation (re-)sent", job_id)
    return len(stale) + len(waiting) + len(parents)


def _recovery_loop(stop: threading.Event, interval: float) -> None:
    while True:
        try:
            recover_stale_jobs()
        except Exception:  # the database or broker may be briefly away; try next round
            log.warning("stale-job scan failed", exc_info=True)
        if stop.wait(interval):
            return


_recovery_stop = threading.Event()


@worker_init.connect
def _warm_up(sender=None, **_: Any) -> None:
    """Import the ML stack before taking tasks. Otherwise a job's first
    epoch pays ~5 s of imports (torch's compiler stack, which the fused Adam
    loads lazily, and matplotlib for the reports), and so does every job
    that a freshly restarted worker resumes."""
    import importlib

    for name in ("torch._dynamo", "models.pipeline", "models.training", "models.reports"):
        importlib.import_module(name)


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
