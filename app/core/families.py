"""Compare jobs as parents of ordinary train jobs.

``POST /jobs/compare`` creates one parent (kind ``compare``) and one child
train job per model x variant x seed. The children are enqueued at once and
run in parallel on whatever workers are free, each resumable from its own
checkpoints like any train job. The parent holds no lease while it waits: it
is ``running`` with ``lease_owner`` NULL, and its progress counts finished
children. When the last child ends, the worker that finished it (or, if that
worker died first, any worker's recovery scan) enqueues the parent's task,
which aggregates the children's reports. Cancelling the parent cancels its
children.

One ordering between children: the loss filter (``row_filter`` 'loss', or the
'auto' default with a softmax loss) scores the regenerated rows with a model
of the original rows, which is exactly the original arm of the same model
and seed. Such a DR4SR child names that
sibling in ``parameters.scorer_job_id``; a delivery that finds the sibling
still queued or running returns without running (it stays queued), and the
sibling's end re-sends it (:func:`released_by`), so the original arm is
trained once, not twice.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import exists, func, select, update
from sqlalchemy.orm import Session, aliased

from app.core.jobstate import record_event
from app.core.orm import ACTIVE_STATES, Job, utcnow
from models.progress import ProgressEvent

CHILD_STAGE = "children"


def child_label(parameters: dict[str, Any]) -> str:
    """``sasrec/dr4sr/seed 2``: what a child trains, for messages."""
    return f"{parameters.get('model')}/{parameters.get('variant')}/seed {parameters.get('seed')}"


def child_counts(session: Session, parent_id: str) -> dict[str, int]:
    rows = session.execute(
        select(Job.state, func.count()).where(Job.parent_job_id == parent_id).group_by(Job.state)
    ).all()
    return {state: int(n) for state, n in rows}


def pending_children(session: Session, parent_id: str) -> int:
    """Children still queued or running."""
    counts = child_counts(session, parent_id)
    return sum(counts.get(s, 0) for s in ACTIVE_STATES)


def children(session: Session, parent_id: str) -> list[Job]:
    return list(
        session.scalars(
            select(Job).where(Job.parent_job_id == parent_id).order_by(Job.created_at, Job.id)
        )
    )


def note_child_finished(session: Session, parent_id: str) -> str | None:
    """Record on the waiting parent how many children have finished; return
    its queue when none is left to wait for (the caller enqueues the parent's
    task after committing), else None. The parent's row is locked, so two
    children ending together count one after the other."""
    parent = session.scalar(select(Job).where(Job.id == parent_id).with_for_update())
    if parent is None or parent.state not in ACTIVE_STATES or parent.lease_owner is not None:
        return None
    counts = child_counts(session, parent_id)
    total = sum(counts.values())
    done = total - sum(counts.get(s, 0) for s in ACTIVE_STATES)
    failed = counts.get("failed", 0) + counts.get("cancelled", 0)
    message = f"{done} of {total} train jobs finished" + (
        f" ({failed} failed or cancelled)" if failed else ""
    )
    parent.progress = record_event(
        dict(parent.progress or {}), ProgressEvent(CHILD_STAGE, done, total, message=message)
    )
    parent.stage = CHILD_STAGE
    parent.updated_at = utcnow()
    return parent.queue if done == total else None


def ready_parents(session: Session) -> list[tuple[str, str]]:
    """(id, queue) of waiting compare jobs none of whose children is active:
    their task should run (a no-op if a message for it is already on its way,
    as the lease lets one delivery in)."""
    child = aliased(Job)
    active_child = exists().where(child.parent_job_id == Job.id, child.state.in_(ACTIVE_STATES))
    rows = session.execute(
        select(Job.id, Job.queue).where(
            Job.kind == "compare",
            Job.state == "running",
            Job.lease_owner.is_(None),
            ~active_child,
        )
    ).all()
    return [(r[0], r[1]) for r in rows]


def cancel_children(session: Session, parent_id: str) -> int:
    """Cancel the parent's queued children at once and flag its running ones
    (their workers stop at the next progress step). Returns how many."""
    now = utcnow()
    queued = session.execute(
        update(Job)
        .where(Job.parent_job_id == parent_id, Job.state == "queued")
        .values(state="cancelled", cancel_requested=True, finished_at=now, updated_at=now)
    ).rowcount
    running = session.execute(
        update(Job)
        .where(Job.parent_job_id == parent_id, Job.state == "running")
        .values(cancel_requested=True, updated_at=now)
    ).rowcount
    return int(queued or 0) + int(running or 0)


def scorer_pending(session: Session, job_id: str) -> str | None:
    """The id of the original-arm sibling this train job scores with, while
    that sibling is still queued or running (the job must wait); else None."""
    job = session.get(Job, job_id)
    scorer_id = (job.parameters or {}).get("scorer_job_id") if job is not None else None
    if scorer_id is None or job is None or job.state != "queued":
        return None
    scorer = session.get(Job, scorer_id)
    return scorer_id if scorer is not None and scorer.state in ACTIVE_STATES else None


def released_by(session: Session, parent_id: str, finished_id: str) -> list[tuple[str, str]]:
    """(id, queue) of the parent's queued children that waited for
    ``finished_id`` as their scorer: the caller sends their tasks."""
    return [
        (kid.id, kid.queue)
        for kid in children(session, parent_id)
        if kid.state == "queued" and (kid.parameters or {}).get("scorer_job_id") == finished_id
    ]
