"""What the API and the workers agree on about jobs: task names, queues,
stage plans and the progress document stored in ``jobs.progress``.

The progress document is ``{"stages": {name: {done, total, epoch, metrics,
message}}, "order": [names in the order seen]}``; the overall fraction is
computed from it and the job kind's stage plan.
"""

from __future__ import annotations

from typing import Any

from models.progress import ProgressEvent

TASK_NAMES = {
    "validate": "dr4sr.validate_dataset",
    "regenerate": "dr4sr.regenerate",
    "train": "dr4sr.train",
    "compare": "dr4sr.compare",
}

# The stages each kind goes through, in order, with the share of the job's
# time each one roughly takes. A stage the pipeline reports that is not
# listed still shows up in the document; it just does not move the overall
# fraction.
STAGE_PLANS: dict[str, tuple[tuple[str, float], ...]] = {
    "validate": (("prepare", 1.0),),
    # the pre-training SASRec reports batches as "pretrain", epochs as "pretrain:valid"
    "regenerate": (
        ("mine", 0.05),
        ("pairs", 0.05),
        ("pretrain:valid", 0.3),
        ("regenerator", 0.45),
        ("decode", 0.15),
    ),
    # training reports "train" per batch and "valid" per epoch: epochs drive the bar
    "train": (("valid", 0.95), ("test", 0.05)),
    # a compare job waits for its train jobs ("children", one per model x
    # variant x seed), then aggregates their reports
    "compare": (("children", 0.95), ("aggregate", 0.05)),
}


def queue_for(device: str, auto_queue: str) -> str:
    """The Celery queue of a job wanting ``device`` ("auto" | "cpu" | "cuda")."""
    if device == "cuda":
        return "gpu"
    if device == "cpu":
        return "cpu"
    if device == "auto":
        return auto_queue
    raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")


def record_event(progress: dict[str, Any], event: ProgressEvent) -> dict[str, Any]:
    """A new progress document with ``event`` folded in (the input is not mutated)."""
    stages = dict(progress.get("stages", {}))
    order = list(progress.get("order", []))
    if event.stage not in stages:
        order.append(event.stage)
    stages[event.stage] = {
        "done": int(event.done),
        "total": None if event.total is None else int(event.total),
        "epoch": event.epoch,
        "metrics": {k: float(v) for k, v in event.metrics.items()},
        "message": event.message,
    }
    return {"stages": stages, "order": order}


def stage_fraction(entry: dict[str, Any]) -> float | None:
    total = entry.get("total")
    if not total:
        return None
    return max(0.0, min(1.0, entry.get("done", 0) / total))


def overall_fraction(kind: str, state: str, progress: dict[str, Any]) -> float:
    """0..1 over the kind's weighted stage plan: planned stages before the
    latest one reached count as finished, that one by its own done/total."""
    if state == "succeeded":
        return 1.0
    plan = STAGE_PLANS.get(kind, ())
    names = [name for name, _ in plan]
    reached = [s for s in progress.get("order", []) if s in names]
    if not reached:
        return 0.0
    current = max(reached, key=names.index)
    index = names.index(current)
    total_weight = sum(w for _, w in plan)
    done = sum(w for _, w in plan[:index])
    done += plan[index][1] * (stage_fraction(progress.get("stages", {}).get(current, {})) or 0.0)
    return round(min(1.0, done / total_weight), 4)
