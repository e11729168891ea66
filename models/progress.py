"""Progress reporting and cooperative cancellation shared by every long stage.

A stage calls ``progress(ProgressEvent(...))`` at natural boundaries (every
batch or every few batches, every epoch). The CLI renders the events as
progress bars; the worker writes them into the job row. A callback may raise
:class:`Cancelled` to stop the stage cooperatively: stages only write their
outputs after they finished, so a cancelled stage leaves nothing half-written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class Cancelled(Exception):
    """Raised by a progress callback to stop the running stage."""


@dataclass
class ProgressEvent:
    stage: str  # e.g. "mine", "pairs", "pretrain", "regenerator", "decode", "train", "evaluate"
    done: int  # units finished in this stage
    total: int | None = None  # units in this stage, None when unknown
    epoch: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    message: str | None = None

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(1.0, self.done / self.total)

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "done": self.done,
            "total": self.total,
            "epoch": self.epoch,
            "metrics": dict(self.metrics),
            "message": self.message,
        }


Progress = Callable[[ProgressEvent], None]


def no_progress(event: ProgressEvent) -> None:
    """The default callback: ignore every event."""
