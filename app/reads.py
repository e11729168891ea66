"""The polled read paths: job status, job and dataset listings, one dataset.

Clients poll these, so each is one thread hop and one pooled connection used
in autocommit mode (no BEGIN/ROLLBACK round trips), with Core statements
built once (no per-request statement construction, no ORM identity map).
Rows are returned as SQLAlchemy ``Row`` objects, whose attribute access
matches the ORM classes', so :func:`app.jobs.render` and the dataset
renderer take either.

Ownership is part of every WHERE clause: another principal's id reads as
nothing, exactly like an id that does not exist.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Engine, Row, bindparam, func, select
from sqlalchemy.exc import DBAPIError

from app.core.orm import Artifact, Dataset, Job

JOBS = Job.__table__
DATASETS = Dataset.__table__
ARTIFACTS = Artifact.__table__
T = TypeVar("T")
log = logging.getLogger(__name__)

# One statement for a job and the kinds of its artifacts (for the links):
# a row per artifact, or one with a NULL kind when there is none.
_JOB = (
    select(JOBS, ARTIFACTS.c.kind.label("artifact_kind"))
    .select_from(JOBS.outerjoin(ARTIFACTS, ARTIFACTS.c.job_id == JOBS.c.id))
    .where(JOBS.c.id == bindparam("id"), JOBS.c.owner_id == bindparam("owner"))
)
_KINDS = (
    select(ARTIFACTS.c.job_id, ARTIFACTS.c.kind)
    .where(ARTIFACTS.c.job_id.in_(bindparam("ids", expanding=True)))
    .distinct()
)
_DATASET = select(DATASETS).where(
    DATASETS.c.id == bindparam("id"), DATASETS.c.owner_id == bindparam("owner")
)
# The newest validation job of a dataset, as a column of the dataset's row.
_LATEST_VALIDATION = (
    select(JOBS.c.id)
    .where(JOBS.c.dataset_id == DATASETS.c.id, JOBS.c.kind == "validate")
    .order_by(JOBS.c.created_at.desc())
    .limit(1)
    .correlate(DATASETS)
    .scalar_subquery()
)
# A page of datasets, each with its validation job and the total count, in
# one round trip.
_DATASETS = (
    select(
        DATASETS,
        _LATEST_VALIDATION.label("validation_job_id"),
        func.count().over().label("total_count"),
    )
    .where(DATASETS.c.owner_id == bindparam("owner"))
    .order_by(DATASETS.c.created_at.desc(), DATASETS.c.id)
    .limit(bindparam("limit"))
    .offset(bindparam("offset"))
)
_DATASET_COUNT = (
    select(func.count()).select_from(DATASETS).where(DATASETS.c.owner_id == bindparam("owner"))
)
_VALIDATIONS = (
    select(JOBS.c.dataset_id, JOBS.c.id)
    .where(JOBS.c.dataset_id.in_(bindparam("ids", expanding=True)), JOBS.c.kind == "validate")
    .order_by(JOBS.c.created_at)
)


def _once_more(fn: Callable[..., T]) -> Callable[..., T]:
    """Run a read again, once, on a fresh connection when the server dropped
    the one it used mid-query (restart, pg_terminate_backend): reads are
    idempotent, so the client never sees that blink. (Idle pooled
    connections that died are already replaced by the pool's pre-ping.)"""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            log.warning("%s: connection lost mid-read, retrying once: %s", fn.__name__, exc.orig)
            return fn(*args, **kwargs)

    return run


def reader(engine: Engine) -> Engine:
    """``engine`` in autocommit mode, sharing its pool: single reads need no
    transaction, so none is opened or rolled back."""
    return engine.execution_options(isolation_level="AUTOCOMMIT")


@_once_more
def job(engine: Engine, owner: int, job_id: str) -> tuple[Row, set[str]] | None:
    with engine.connect() as conn:
        rows = conn.execute(_JOB, {"id": job_id, "owner": owner}).all()
    if not rows:
        return None
    return rows[0], {r.artifact_kind for r in rows if r.artifact_kind is not None}


@_once_more
def jobs(
    engine: Engine,
    owner: int,
    *,
    state: str | None,
    kind: str | None,
    dataset_id: str | None,
    limit: int,
    parent_job_id: str | None = None,
    offset: int,
) -> tuple[list[Row], dict[str, set[str]], int]:
    where = [JOBS.c.owner_id == owner]
    if state:
        where.append(JOBS.c.state == state)
    if kind:
        where.append(JOBS.c.kind == kind)
    if dataset_id:
        where.append(JOBS.c.dataset_id == dataset_id)
    if parent_job_id:
        where.append(JOBS.c.parent_job_id == parent_job_id)
    page = (
        select(JOBS, func.count().over().label("total_count"))
        .where(*where)
        # id breaks ties of created_at (a compare inserts its train jobs
        # together), so that pages neither repeat nor skip a job.
        .order_by(JOBS.c.created_at.desc(), JOBS.c.id)
        .limit(limit)
        .offset(offset)
    )
    with engine.connect() as conn:
        rows = conn.execute(page).all()
        if rows:
            total = int(rows[0].total_count)
        else:  # past the last page the window count has no row to ride on
            total = int(conn.execute(select(func.count()).select_from(JOBS).where(*where)).scalar())
        kinds: dict[str, set[str]] = {r.id: set() for r in rows}
        if rows:
            for job_id, artifact_kind in conn.execute(_KINDS, {"ids": list(kinds)}):
                kinds[job_id].add(artifact_kind)
    return rows, kinds, total


@_once_more
def dataset(engine: Engine, owner: int, dataset_id: str) -> tuple[Row, str | None] | None:
    with engine.connect() as conn:
        row = conn.execute(_DATASET, {"id": dataset_id, "owner": owner}).first()
        if row is None:
            return None
        return row, _validation_jobs(conn, [row.id]).get(row.id)


@_once_more
def datasets(
    engine: Engine, owner: int, limit: int, offset: int
) -> tuple[list[Row], dict[str, str], int]:
    with engine.connect() as conn:
        rows = conn.execute(_DATASETS, {"owner": owner, "limit": limit, "offset": offset}).all()
        if rows:
            total = int(rows[0].total_count)
        else:  # past the last page the window count has no row to ride on
            total = int(conn.execute(_DATASET_COUNT, {"owner": owner}).scalar() or 0)
    validation = {r.id: r.validation_job_id for r in rows if r.validation_job_id}
    return rows, validation, total


def _validation_jobs(conn: Any, dataset_ids: list[str]) -> dict[str, str]:
    """The newest validation job of each dataset."""
    latest: dict[str, str] = {}
    if dataset_ids:
        for dataset_id, job_id in conn.execute(_VALIDATIONS, {"ids": dataset_ids}):
            latest[dataset_id] = job_id  # oldest first: the newest wins
    return latest
