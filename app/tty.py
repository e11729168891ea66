"""Render :class:`models.progress.ProgressEvent` streams on stderr.

On a terminal: tqdm bars, one per stage; a new stage closes the previous bar.
Elsewhere (a pipe, a log file, CI): plain timestamped lines, so a long run
that is logged still shows where it is: one line when a stage starts, when
an epoch ends or is validated, when a stage finishes, and otherwise at
most one every ``interval_s`` seconds. ``DR4SR_PROGRESS=bars|lines|off`` overrides the choice.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

from tqdm.auto import tqdm

from models.progress import ProgressEvent

MODES = ("bars", "lines", "off")


def _metrics(event: ProgressEvent) -> dict[str, str]:
    return {k: f"{v:.4g}" for k, v in event.metrics.items()}


class TerminalProgress:
    def __init__(self, enabled: bool | None = None, mode: str | None = None,
                 stream: TextIO | None = None, interval_s: float = 30.0) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if mode is None:
            mode = os.environ.get("DR4SR_PROGRESS") or None
        if mode is not None and mode not in MODES:
            raise ValueError(f"DR4SR_PROGRESS must be one of {', '.join(MODES)}, got {mode!r}")
        if mode is None:
            if enabled is False:
                mode = "off"
            else:
                mode = "bars" if (enabled or self.stream.isatty()) else "lines"
        self.mode = mode
        self.interval_s = interval_s
        self._bar: tqdm | None = None
        self._stage: str | None = None
        self._epoch: int | None = None
        self._last_line = 0.0
        self._stage_started = 0.0
        self._seen: set[str] = set()

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def __call__(self, event: ProgressEvent) -> None:
        if self.mode == "bars":
            self._bars(event)
        elif self.mode == "lines":
            self._lines(event)

    # -- plain lines ----------------------------------------------------------
    def _lines(self, event: ProgressEvent) -> None:
        now = time.monotonic()
        new_stage = event.stage != self._stage
        if new_stage:
            # a stage that comes back (training after each validation) is not announced again
            first_time = event.stage not in self._seen
            self._seen.add(event.stage)
            self._stage, self._epoch, self._stage_started = event.stage, None, now
        epoch_ended = event.epoch is not None and self._epoch is not None and event.epoch != self._epoch
        finished = event.total is not None and event.done >= event.total
        announce = new_stage and first_time
        validation = event.stage.endswith("valid")  # one event per epoch, with the metrics
        if not (announce or validation or epoch_ended or finished or now - self._last_line >= self.interval_s):
            self._epoch = event.epoch if event.epoch is not None else self._epoch
            return
        self._epoch = event.epoch if event.epoch is not None else self._epoch
        self._last_line = now
        parts = [time.strftime("%H:%M:%S"), event.stage]
        if event.total:
            parts.append(f"{event.done}/{event.total} ({100 * event.done / event.total:.0f}%)")
        elif event.done:
            parts.append(str(event.done))
        if event.epoch is not None:
            parts.append(f"epoch {event.epoch}")
        parts += [f"{k}={v}" for k, v in _metrics(event).items()]
        if finished or not announce:
            parts.append(f"[{now - self._stage_started:.0f}s]")
        if event.message:
            parts.append(event.message)
        print(" ".join(parts), file=self.stream, flush=True)

    # -- tqdm bars ------------------------------------------------------------
    def _bars(self, event: ProgressEvent) -> None:
        if event.stage != self._stage:
            self.close()
            self._stage = event.stage
            self._bar = tqdm(total=event.total, desc=event.stage, file=self.stream, leave=True)
        bar = self._bar
        assert bar is not None
        if event.total is not None and bar.total != event.total:
            bar.total = event.total
        bar.n = event.done
        postfix = _metrics(event)
        if event.epoch is not None:
            postfix["epoch"] = str(event.epoch)
        if postfix:
            bar.set_postfix(postfix, refresh=False)
        bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._stage = None

    def __enter__(self) -> TerminalProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
