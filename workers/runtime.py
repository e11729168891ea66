"""One delivery of one job: lease, heartbeat, progress, time limits, outcome.

A delivery first *claims* the job row (an atomic UPDATE that succeeds only
while nobody else holds an unexpired lease), so a duplicate delivery of the
same message exits instead of running the job twice. While it runs, a
heartbeat thread renews the lease and notices cancel requests; the progress
callback handed to :mod:`models.pipeline` writes the job row (throttled) and
raises :class:`models.progress.Cancelled` when a cancel was requested.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, or_, update
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app.core.db import make_engine, make_sessionmaker, session_scope
from app.core.jobstate import record_event
from app.core.orm import ACTIVE_STATES, Artifact, Job, utcnow
from app.core.settings import Settings, get_settings
from app.core.storage import ArtifactStore, StoredObject
from models.progress import Cancelled, ProgressEvent

log = logging.getLogger(__name__)

# Exit status of a worker killed by its own hard-time-limit watchdog.
HARD_LIMIT_EXIT = 70
# A job-row write that meets a dropped connection (database restart,
# pg_terminate_backend) is retried on a fresh one before the attempt is given up.
DB_RETRIES = 4
DB_RETRY_BACKOFF_S = 0.25


def with_db_retry(fn: Callable[[], Any], what: str) -> Any:
    """Run the transaction ``fn`` again after a connection-level failure.
    Every caller's transaction is idempotent or guarded by the lease owner,
    so replaying one whose commit was lost in transit changes nothing."""
    for attempt in range(DB_RETRIES):
        try:
            return fn()
        except (OperationalError, InterfaceError) as exc:
            if attempt == DB_RETRIES - 1:
                raise
            log.warning("%s: database error, retrying: %s", what, exc)
            time.sleep(DB_RETRY_BACKOFF_S * 2**attempt)
    raise AssertionError("unreachable")


class LeaseLost(Exception):
    """Another delivery took the job over (our lease expired); stop quietly."""


class JobTimeLimit(Exception):
    """The job ran past the soft time limit."""


@dataclass
class WorkerContext:
    settings: Settings
    sessions: sessionmaker[Session]
    store: ArtifactStore


_context: WorkerContext | None = None
_context_lock = threading.Lock()


def get_context() -> WorkerContext:
    global _context
    with _context_lock:
        if _context is None:
            settings = get_settings()
            # few connections: one job thread, its heartbeat and the recovery scan
            engine = make_engine(
                settings.resolved_database_url,
                application_name="dr4sr-worker",
                pool_size=3,
                max_overflow=5,
            )
            _context = WorkerContext(
                settings, make_sessionmaker(engine), ArtifactStore(settings.resolved_storage_url)
            )
        return _context


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class ClaimedJob:
    id: str
    kind: str
    owner_id: int
    dataset_id: str
    source_job_id: str | None
    parameters: dict[str, Any]
    attempt: int
    max_attempts: int
    parent_job_id: str | None = None


def error_document(exc: BaseException, stage: str | None, attempt: int) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "type": type(exc).__name__,
        "message": str(exc) or type(exc).__name__,
        "stage": stage,
        "attempt": attempt,
    }
    for name in ("file", "line", "column"):  # DataError's location, when present
        value = getattr(exc, name, None)
        if value is not None:
            doc[name] = value if isinstance(value, int) else str(value)
    return doc


class JobRun:
    """State of one delivery. Use :meth:`claim`, then the callbacks, then one
    of :meth:`succeed`, :meth:`fail`, :meth:`cancel` or :meth:`requeue`."""

    def __init__(self, ctx: WorkerContext, job_id: str, owner: str | None = None) -> None:
        self.ctx = ctx
        self.job_id = job_id
        self.owner = owner or worker_identity()
        self.job: ClaimedJob | None = None
        self._doc: dict[str, Any] = {}
        self._stage: str | None = None
        self._last_write = 0.0
        self._cancel = threading.Event()
        self._lost = threading.Event()
        self._soft_expired = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def stage(self) -> str | None:
        return self._stage

    @property
    def lease_lost(self) -> bool:
        """Whether the heartbeat found the lease taken by another delivery."""
        return self._lost.is_set()

    # -- claim -----------------------------------------------------------------
    def claim(self) -> ClaimedJob | None:
        """Take the lease, or return None when this delivery must not run."""
        job = with_db_retry(self._claim_once, f"job {self.job_id}: claim")
        if job is not None:
            self._start_threads()
        return job

    def _claim_once(self) -> ClaimedJob | None:
        s = self.ctx.settings
        now = utcnow()
        with session_scope(self.ctx.sessions) as session:
            claimed = session.execute(
                update(Job)
                .where(
                    Job.id == self.job_id,
                    Job.state.in_(ACTIVE_STATES),
                    or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now),
                )
                .values(
                    state="running",
                    lease_owner=self.owner,
                    heartbeat_at=now,
                    lease_expires_at=now + timedelta(seconds=s.lease_s),
                    attempts=Job.attempts + 1,
                    updated_at=now,
                    started_at=func.coalesce(Job.started_at, now),
                )
                .returning(Job.attempts, Job.max_attempts, Job.cancel_requested)
            ).one_or_none()
            if claimed is None:
                log.info(
                    "job %s: not claimable (finished, cancelled or leased elsewhere)", self.job_id
                )
                return None
            attempts, max_attempts, cancel_requested = claimed
            row = session.get(Job, self.job_id)
            assert row is not None
            if cancel_requested:
                self._finish(session, "cancelled", None)
                return None
            if attempts > max_attempts:
                previous = (row.error or {}).get("message")
                message = f"gave up after {max_attempts} attempts" + (
                    f" (last error: {previous})" if previous else " (the worker was lost each time)"
                )
                self._finish(
                    session,
                    "failed",
                    {
                        "type": "TooManyAttempts",
                        "message": message,
                        "stage": row.stage,
                        "attempt": attempts,
                    },
                )
                return None
            self._doc = dict(row.progress or {})
            self._stage = row.stage
            self.job = ClaimedJob(
                row.id,
                row.kind,
                row.owner_id,
                row.dataset_id,
                row.source_job_id,
                dict(row.parameters or {}),
                attempts,
                max_attempts,
                row.parent_job_id,
            )
        return self.job

    def _start_threads(self) -> None:
        hb = threading.Thread(target=self._heartbeat_loop, name=f"lease-{self.job_id}", daemon=True)
        wd = threading.Thread(target=self._watchdog, name=f"limits-{self.job_id}", daemon=True)
        self._threads = [hb, wd]
        for t in self._threads:
            t.start()

    def _heartbeat_loop(self) -> None:
        interval = max(0.2, self.ctx.settings.lease_s / 3)
        while not self._stop.wait(interval):
            try:
                self._renew()
            except Exception:  # a DB hiccup: the next beat tries again before expiry
                log.warning("job %s: lease renewal failed", self.job_id, exc_info=True)

    def _renew(self) -> None:
        now = utcnow()
        with session_scope(self.ctx.sessions) as session:
            row = session.execute(
                update(Job)
                .where(Job.id == self.job_id, Job.lease_owner == self.owner, Job.state == "running")
                .values(
                    heartbeat_at=now,
                    lease_expires_at=now + timedelta(seconds=self.ctx.settings.lease_s),
                )
                .returning(Job.cancel_requested)
            ).one_or_none()
        if row is None:
            self._lost.set()
        elif row[0]:
            self._cancel.set()

    def _watchdog(self) -> None:
        s = self.ctx.settings
        if self._stop.wait(s.soft_time_limit_s):
            return
        self._soft_expired.set()
        if self._stop.wait(s.hard_time_limit_s - s.soft_time_limit_s):
            return
        # The solo pool cannot interrupt a task, so the hard limit is enforced
        # by recording the failure and ending the process; the supervisor
        # (compose restart policy, `dr4sr serve`) starts a fresh worker, and
        # the redelivered message finds the job already failed.
        log.error("job %s: hard time limit exceeded, exiting worker", self.job_id)
        try:
            with session_scope(self.ctx.sessions) as session:
                self._finish(
                    session,
                    "failed",
                    {
                        "type": "HardTimeLimitExceeded",
                        "stage": self._stage,
                        "message": f"job exceeded the hard time limit of {s.hard_time_limit_s} s",
                    },
                )
        finally:
            os._exit(HARD_LIMIT_EXIT)

    # -- progress callback -------------------------------------------------------
    def progress(self, event: ProgressEvent) -> None:
        if self._lost.is_set():
            raise LeaseLost(f"job {self.job_id} was taken over by another worker")
        if self._cancel.is_set():
            raise Cancelled(f"job {self.job_id} was cancelled")
        if self._soft_expired.is_set():
            raise JobTimeLimit(
                f"job exceeded the soft time limit of {self.ctx.settings.soft_time_limit_s} s"
            )
        self._doc = record_event(self._doc, event)
        stage_changed = event.stage != self._stage
        self._stage = event.stage
        now = time.monotonic()
        if stage_changed or now - self._last_write >= self.ctx.settings.progress_interval_s:
            self._last_write = now
            self._write_progress()
            if self._cancel.is_set():
                raise Cancelled(f"job {self.job_id} was cancelled")

    def _write_progress(self) -> None:
        def write() -> Any:
            with session_scope(self.ctx.sessions) as session:
                return session.execute(
                    update(Job)
                    .where(
                        Job.id == self.job_id, Job.lease_owner == self.owner, Job.state == "running"
                    )
                    .values(progress=self._doc, stage=self._stage, updated_at=utcnow())
                    .returning(Job.cancel_requested)
                ).one_or_none()

        row = with_db_retry(write, f"job {self.job_id}: progress")
        if row is None:
            self._lost.set()
            raise LeaseLost(f"job {self.job_id} was taken over by another worker")
        if row[0]:
            self._cancel.set()

    # -- outcomes ------------------------------------------------------------------
    def _finish(
        self,
        session: Session,
        state: str,
        error: dict[str, Any] | None,
        result: dict[str, Any] | None = None,
    ) -> bool:
        now = utcnow()
        values: dict[str, Any] = dict(
            state=state,
            error=error,
            finished_at=now,
            updated_at=now,
            lease_owner=None,
            lease_expires_at=None,
            progress=self._doc,
            stage=self._stage,
        )
        if result is not None:
            values["result"] = result
        done = session.execute(
            update(Job)
            .where(
                Job.id == self.job_id,
                # only the lease holder may finish: a delivery that lost its
                # lease (and maybe its job to another worker) changes nothing
                Job.lease_owner == self.owner,
                Job.state.in_(ACTIVE_STATES),
            )
            .values(**values)
        ).rowcount
        return done == 1

    def _stop_threads(self) -> None:
        self._stop.set()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=5)

    def succeed(
        self,
        result: dict[str, Any],
        stored: list[tuple[str, StoredObject]],
        finalize: Callable[[Session], None] | None = None,
    ) -> bool:
        """Record the artifacts (replacing those of an earlier attempt) and the
        result in one transaction; False when the lease was lost meanwhile."""
        self._stop_threads()
        prefix = f"jobs/{self.job_id}/"

        def record() -> bool:
            with session_scope(self.ctx.sessions) as session:
                session.execute(delete(Artifact).where(Artifact.job_id == self.job_id))
                for kind, obj in stored:
                    session.add(
                        Artifact(
                            job_id=self.job_id,
                            kind=kind,
                            name=obj.key.removeprefix(prefix),
                            format=Path(obj.key).suffix.lstrip(".") or None,
                            uri=obj.uri,
                            size=obj.size,
                            sha256=obj.sha256,
                        )
                    )
                if finalize is not None:
                    finalize(session)
                if not self._finish(session, "succeeded", None, result):
                    session.rollback()
                    log.warning("job %s: lease lost before success could be recorded", self.job_id)
                    return False
            return True

        return with_db_retry(record, f"job {self.job_id}: record success")

    def fail(
        self, exc: BaseException, on_stop: Callable[[Session, str], None] | None = None
    ) -> None:
        self._stop_threads()
        attempt = self.job.attempt if self.job else 0
        error = error_document(exc, self._stage, attempt)

        def record() -> None:
            with session_scope(self.ctx.sessions) as session:
                if self._finish(session, "failed", error) and on_stop:
                    on_stop(session, str(exc))

        with_db_retry(record, f"job {self.job_id}: record failure")

    def cancel(self, on_stop: Callable[[Session, str], None] | None = None) -> None:
        self._stop_threads()

        def record() -> None:
            with session_scope(self.ctx.sessions) as session:
                if self._finish(session, "cancelled", None) and on_stop:
                    on_stop(session, "validation was cancelled")

        with_db_retry(record, f"job {self.job_id}: record cancel")

    def requeue(self, exc: BaseException) -> None:
        """Give the lease back after a transient error so a retry can claim it."""
        self._stop_threads()
        attempt = self.job.attempt if self.job else 0

        def record() -> None:
            with session_scope(self.ctx.sessions) as session:
                session.execute(
                    update(Job)
                    .where(Job.id == self.job_id, Job.lease_owner == self.owner)
                    .values(
                        state="queued",
                        lease_owner=None,
                        lease_expires_at=None,
                        updated_at=utcnow(),
                        error=error_document(exc, self._stage, attempt),
                    )
                )

        with_db_retry(record, f"job {self.job_id}: requeue")

    def release(self) -> None:
        """Stop the threads without touching the row (lease lost to another delivery)."""
        self._stop_threads()


def scratch_dir(settings: Settings, job_id: str, attempt: int) -> Path:
    """A clean local folder for one attempt (a redelivered attempt starts over)."""
    path = settings.resolved_work_dir / "jobs" / job_id / f"attempt-{attempt}"
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def requeue_stale_jobs(session: Session) -> list[tuple[str, str, str]]:
    """Flip running jobs whose worker stopped renewing the lease back to
    queued; returns (id, kind, queue) of the jobs *this* caller flipped, so
    concurrent scanners never both re-enqueue the same job."""
    now = utcnow()
    rows = session.execute(
        update(Job)
        .where(Job.state == "running", Job.lease_expires_at < now)
        .values(state="queued", lease_owner=None, lease_expires_at=None, updated_at=now)
        .returning(Job.id, Job.kind, Job.queue)
    ).all()
    return [(r[0], r[1], r[2]) for r in rows]


def requeue_waiting_jobs(session: Session, older_than_s: float) -> list[tuple[str, str, str]]:
    """Queued jobs untouched for ``older_than_s`` seconds (0: all of them):
    their message may be lost (a broker restarted without persistence), so the
    caller sends another. ``updated_at`` is bumped in the same statement, so
    concurrent scanners do not both pick a job, and a job is re-sent at most
    once per period."""
    now = utcnow()
    cutoff = now - timedelta(seconds=older_than_s)
    rows = session.execute(
        update(Job)
        .where(Job.state == "queued", Job.updated_at <= cutoff)
        .values(updated_at=now)
        .returning(Job.id, Job.kind, Job.queue)
    ).all()
    return [(r[0], r[1], r[2]) for r in rows]
