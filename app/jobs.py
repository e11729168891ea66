"""Job operations behind the routers: create and enqueue, look up, cancel,
and render a row as the API's :class:`app.schemas.JobOut`."""

from __future__ import annotations

import uuid
from typing import Any

from celery import Celery
from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from app.auth import Caller
from app.core.datasets import mark_invalid
from app.core.families import CHILD_STAGE, cancel_children
from app.core.jobstate import (
    TASK_NAMES,
    overall_fraction,
    queue_for,
    record_event,
    stage_fraction,
)
from app.core.orm import ACTIVE_STATES, Artifact, Dataset, Job, Principal, utcnow
from app.core.settings import Settings
from app.core.storage import ArtifactStore
from app.errors import Conflict, Invalid, NotFound, TooLarge, TooManyRequests, Unavailable
from app.schemas import JobOut, JobProgress, StageProgress
from models.config import PersonalizerConfig, train_job_config
from models.progress import ProgressEvent

# Artifact kind -> link name in JobOut.links (and the route serving it).
RESULT_LINKS = {
    "report": ("report", "/jobs/{id}/report"),
    "stats": ("report", "/jobs/{id}/report"),  # a regeneration's statistics
    "report_html": ("report.html", "/jobs/{id}/report.html"),
    "topk": ("topk", "/jobs/{id}/topk"),
    "checkpoint": ("checkpoint", "/jobs/{id}/checkpoint"),
}


def is_id(value: str | None) -> bool:
    """Whether ``value`` is an id this service could have issued (a canonical
    UUID). Anything else names nothing, so it is answered without a query:
    a NUL byte or a path never reaches the database or a storage key."""
    if not value or len(value) != 36:
        return False
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


# Built once: constructing a SELECT and its cache key on every request costs
# more than running it. (The polled reads have their own, in app.reads.)
_OWNED_DATASET = select(Dataset).where(
    Dataset.id == bindparam("id"), Dataset.owner_id == bindparam("owner")
)
_OWNED_DATASET_LOCKED = _OWNED_DATASET.with_for_update()
_OWNED_JOB = select(Job).where(Job.id == bindparam("id"), Job.owner_id == bindparam("owner"))
_ARTIFACT_KINDS = (
    select(Artifact.job_id, Artifact.kind)
    .where(Artifact.job_id.in_(bindparam("ids", expanding=True)))
    .distinct()
)


def owned_dataset(
    session: Session, principal: Caller, dataset_id: str, *, lock: bool = False
) -> Dataset:
    if not is_id(dataset_id):
        raise NotFound(f"no dataset {dataset_id}", field="dataset_id")
    query = _OWNED_DATASET_LOCKED if lock else _OWNED_DATASET
    ds = session.scalar(query, {"id": dataset_id, "owner": principal.id})
    if ds is None:
        raise NotFound(f"no dataset {dataset_id}", field="dataset_id")
    return ds


def ready_dataset(session: Session, principal: Caller, dataset_id: str) -> Dataset:
    ds = owned_dataset(session, principal, dataset_id, lock=True)
    if ds.status != "ready":
        raise Conflict(
            f"dataset {dataset_id} is {ds.status}; jobs need a validated ('ready') dataset",
            field="dataset_id",
        )
    return ds


def owned_job(session: Session, principal: Caller, job_id: str) -> Job:
    if not is_id(job_id):
        raise NotFound(f"no job {job_id}")
    job = session.scalar(_OWNED_JOB, {"id": job_id, "owner": principal.id})
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job


def regeneration_for(
    session: Session, principal: Caller, dataset: Dataset, job_id: str | None
) -> Job:
    """The given successful regeneration of ``dataset``, or its latest one."""
    if job_id is not None:
        job = None
        if is_id(job_id):
            job = session.scalar(_OWNED_JOB, {"id": job_id, "owner": principal.id})
        if job is None or job.kind != "regenerate" or job.dataset_id != dataset.id:
            raise NotFound(
                f"no regeneration job {job_id} for dataset {dataset.id}",
                field="regeneration_job_id",
            )
        if job.state != "succeeded":
            raise Conflict(
                f"regeneration job {job_id} is {job.state}, not succeeded",
                field="regeneration_job_id",
            )
        return job
    job = session.scalar(
        select(Job)
        .where(Job.dataset_id == dataset.id, Job.kind == "regenerate", Job.state == "succeeded")
        .order_by(Job.finished_at.desc(), Job.created_at.desc())
        .limit(1)
    )
    if job is None:
        raise NotFound(
            f"dataset {dataset.id} has no successful regeneration yet; "
            "run POST /jobs/regenerate first",
            field="regeneration_job_id",
        )
    return job


def check_personalizable(regeneration: Job, personalizer: PersonalizerConfig) -> None:
    """DR4SR+ on ``regeneration`` must have rows to re-weight: a regeneration
    that decoded no regenerated row (a short or tiny one can) leaves the
    default ``fixed`` profile, which re-weights only regenerated rows, nothing
    to learn, and the train job would fail after queueing. Answer 422 now,
    by the trainer's own rule (:meth:`PersonalizerConfig.nothing_to_weigh`)."""
    counts = (regeneration.result or {}).get("rows")
    unweighted = personalizer.nothing_to_weigh(counts) if counts else None
    if unweighted:
        raise Invalid(
            f"DR4SR+ on regeneration {regeneration.id}: {unweighted}; use another regeneration, "
            "or set parameters.personalizer.profile to 'parity' (which re-weights original rows "
            "too) or add 'original' to parameters.personalizer.weight_sources",
            field="parameters.personalizer.weight_sources",
        )


# The kinds a principal submits; validation jobs follow uploads and are
# bounded by the storage quota instead.
LIMITED_KINDS = ("regenerate", "train", "compare")


def stored_bytes(session: Session, owner_id: int) -> int:
    """Bytes of every stored file (uploads, prepared data, job results) of a principal."""
    of_datasets = (
        select(func.coalesce(func.sum(Artifact.size), 0))
        .join(Dataset, Artifact.dataset_id == Dataset.id)
        .where(Dataset.owner_id == owner_id)
    )
    of_jobs = (
        select(func.coalesce(func.sum(Artifact.size), 0))
        .join(Job, Artifact.job_id == Job.id)
        .where(Job.owner_id == owner_id)
    )
    return int(session.scalar(of_datasets) or 0) + int(session.scalar(of_jobs) or 0)


def upload_allowance(session: Session, settings: Settings, owner_id: int) -> tuple[int, str]:
    """The largest upload this principal may send now, and how to describe
    that limit in a 413. Raises 413 when the storage quota is used up."""
    quota = settings.max_stored_bytes_per_principal
    used = stored_bytes(session, owner_id)
    remaining = quota - used
    if remaining <= 0:
        raise TooLarge(
            f"storage quota exceeded: {used} of {quota} bytes used; delete datasets to free space",
            field="file",
            code="quota_exceeded",
        )
    if remaining < settings.max_upload_bytes:
        return remaining, f"the remaining storage quota of {remaining} bytes (of {quota})"
    return settings.max_upload_bytes, f"the maximum size of {settings.max_upload_bytes} bytes"


def check_active_jobs(session: Session, settings: Settings, owner_id: int) -> None:
    """429 when the principal already has the allowed number of active jobs.
    The principal's row is locked until the caller commits, so two concurrent
    submissions cannot both take the last slot (PostgreSQL; SQLite serialises
    writers anyway)."""
    session.execute(select(Principal.id).where(Principal.id == owner_id).with_for_update())
    limit = settings.max_active_jobs_per_principal
    active = count_jobs(
        session,
        [
            Job.owner_id == owner_id,
            Job.kind.in_(LIMITED_KINDS),
            Job.state.in_(ACTIVE_STATES),
            Job.parent_job_id.is_(None),  # a compare's train jobs count as the compare
        ],
    )
    if active >= limit:
        raise TooManyRequests(
            f"{active} jobs are already queued or running (limit {limit} per principal); "
            "wait for one to finish or cancel one",
            headers={"Retry-After": "30"},
        )


def submit(
    session: Session,
    celery: Celery,
    settings: Settings,
    *,
    owner_id: int,
    dataset_id: str,
    kind: str,
    parameters: dict[str, Any],
    device: str = "cpu",
    source_job_id: str | None = None,
) -> Job:
    """Insert a queued job, commit, and enqueue its task by name."""
    queue = queue_for(device, settings.auto_device_queue)
    if kind in LIMITED_KINDS:
        check_active_jobs(session, settings, owner_id)
    job = Job(
        owner_id=owner_id,
        dataset_id=dataset_id,
        kind=kind,
        state="queued",
        queue=queue,
        parameters=parameters,
        progress={},
        max_attempts=settings.max_attempts,
        source_job_id=source_job_id,
    )
    session.add(job)
    session.commit()
    _enqueue(session, celery, [job], [job])
    return job


def _enqueue(session: Session, celery: Celery, send: list[Job], family: list[Job]) -> None:
    """Send the task of each job in ``send`` (committed rows); when the broker
    refuses, fail every job of ``family`` (a job and, for a compare, its parent
    and siblings) and answer 503. A message lost later is re-sent by the
    workers' scan."""
    try:
        for job in send:
            celery.send_task(TASK_NAMES[job.kind], args=[job.id], queue=job.queue)
    except Exception as exc:
        for job in family:
            job.state, job.finished_at = "failed", utcnow()
            job.error = {
                "type": "BrokerUnavailable",
                "message": f"could not enqueue the job: {exc}",
            }
        session.commit()
        raise Unavailable(f"the job queue is unavailable: {exc}") from exc


def submit_compare(
    session: Session,
    celery: Celery,
    settings: Settings,
    *,
    owner_id: int,
    dataset_id: str,
    models: list[str],
    variants: list[str],
    seeds: list[int],
    config: dict[str, Any],
    device: str = "cpu",
    source_job_id: str | None = None,
) -> Job:
    """A compare job and its train jobs, one per model x variant x seed, in
    one transaction; the train jobs are enqueued, the parent waits for them
    (see :mod:`app.core.families`)."""
    queue = queue_for(device, settings.auto_device_queue)
    check_active_jobs(session, settings, owner_id)
    now = utcnow()
    parent = Job(
        id=str(uuid.uuid4()),
        owner_id=owner_id,
        dataset_id=dataset_id,
        kind="compare",
        state="running",  # waiting for its children, without a lease
        queue=queue,
        parameters={},
        progress={},
        max_attempts=settings.max_attempts,
        source_job_id=source_job_id,
        started_at=now,
    )
    kids: list[Job] = []
    plan: list[dict[str, Any]] = []
    # the loss filter scores with the original arm: the DR4SR child waits for it (app.core.families)
    filtered = "original" in variants and train_job_config(config).runs_loss_filter()
    for model in models:
        for seed in seeds:
            ids = {variant: str(uuid.uuid4()) for variant in variants}
            for variant in variants:
                params = {
                    "data": "original" if variant == "original" else "regenerated",
                    "model": model,
                    "personalize": variant == "dr4sr+",
                    "variant": variant,
                    "seed": seed,
                    "config": {**config, "seed": seed},
                }
                if filtered and variant == "dr4sr":
                    params["scorer_job_id"] = ids["original"]
                kid = Job(
                    id=ids[variant],
                    owner_id=owner_id,
                    dataset_id=dataset_id,
                    parent_job_id=parent.id,
                    kind="train",
                    state="queued",
                    queue=queue,
                    parameters=params,
                    progress={},
                    max_attempts=settings.max_attempts,
                    source_job_id=None if variant == "original" else source_job_id,
                )
                kids.append(kid)
                plan.append({"job_id": kid.id, "model": model, "variant": variant, "seed": seed})
    parent.parameters = {
        "models": models,
        "variants": variants,
        "seeds": seeds,
        "config": config,
        "children": plan,
    }
    parent.progress = record_event(
        {},
        ProgressEvent(CHILD_STAGE, 0, len(kids), message=f"0 of {len(kids)} train jobs finished"),
    )
    parent.stage = CHILD_STAGE
    session.add(parent)
    session.flush()  # the parent's row first: the children reference it
    session.add_all(kids)
    session.commit()
    # a child that scores with its original arm is sent when that arm ends
    _enqueue(session, celery, [k for k in kids if "scorer_job_id" not in k.parameters], [parent, *kids])
    return parent


def request_cancel(session: Session, store: ArtifactStore, job: Job) -> Job:
    """Queued jobs are cancelled at once; running ones are flagged and stop
    at their next progress step (the worker records 'cancelled'). A compare
    job cancels its train jobs too; while it only waits for them (no worker
    holds it) it is cancelled at once."""
    if job.state in ("succeeded", "failed", "cancelled"):
        raise Conflict(f"job {job.id} already {job.state}")
    now = utcnow()
    job.cancel_requested = True
    if job.kind == "compare":
        cancel_children(session, job.id)
    waiting = job.kind == "compare" and job.lease_owner is None
    if job.state == "queued" or waiting:
        job.state, job.finished_at = "cancelled", now
        if job.kind == "validate":
            mark_invalid(session, store, job.dataset_id, "validation was cancelled")
    job.updated_at = now
    session.commit()
    return job


def active_jobs_of(session: Session, dataset_id: str) -> list[str]:
    return list(
        session.scalars(
            select(Job.id).where(Job.dataset_id == dataset_id, Job.state.in_(ACTIVE_STATES))
        )
    )


def count_jobs(session: Session, where: list) -> int:
    return int(session.scalar(select(func.count()).select_from(Job).where(*where)) or 0)


def render(job: Job, artifact_kinds: set[str]) -> JobOut:
    progress = job.progress or {}
    stages = {
        name: StageProgress(
            done=entry.get("done", 0),
            total=entry.get("total"),
            fraction=stage_fraction(entry),
            epoch=entry.get("epoch"),
            metrics=entry.get("metrics") or {},
            message=entry.get("message"),
        )
        for name, entry in (progress.get("stages") or {}).items()
    }
    links = {"self": f"/jobs/{job.id}", "dataset": f"/datasets/{job.dataset_id}"}
    if job.state in ACTIVE_STATES:
        links["cancel"] = f"/jobs/{job.id}/cancel"
    if job.kind == "compare":
        links["children"] = f"/jobs?parent_job_id={job.id}"
    if job.parent_job_id is not None:
        links["parent"] = f"/jobs/{job.parent_job_id}"
    if job.state == "succeeded":
        for kind, (name, template) in RESULT_LINKS.items():
            if kind in artifact_kinds:
                links[name] = template.format(id=job.id)
        if job.kind == "regenerate" and "regenerated" in artifact_kinds:
            links["regenerated"] = (
                f"/datasets/{job.dataset_id}/regenerated?job={job.id}&format=parquet"
            )
    return JobOut(
        id=job.id,
        kind=job.kind,
        state=job.state,
        dataset_id=job.dataset_id,  # type: ignore[arg-type]
        regeneration_job_id=job.source_job_id,
        parent_job_id=job.parent_job_id,
        queue=job.queue,  # type: ignore[arg-type]
        parameters=job.parameters or {},
        progress=JobProgress(
            stage=job.stage, fraction=overall_fraction(job.kind, job.state, progress), stages=stages
        ),
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        cancel_requested=job.cancel_requested,
        error=job.error,
        result=job.result,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        updated_at=job.updated_at,
        links=links,
    )


def artifact_kinds(session: Session, job_ids: list[str]) -> dict[str, set[str]]:
    kinds: dict[str, set[str]] = {j: set() for j in job_ids}
    if job_ids:
        for job_id, kind in session.execute(_ARTIFACT_KINDS, {"ids": job_ids}):
            kinds[job_id].add(kind)
    return kinds
