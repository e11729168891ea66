"""Render :class:`models.progress.ProgressEvent` streams as tqdm bars.

Bars are shown only when stderr is a terminal, so piped or logged runs stay
quiet. One bar per stage; a new stage closes the previous bar.
"""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

from models.progress import ProgressEvent


class TerminalProgress:
    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._bar: tqdm | None = None
        self._stage: str | None = None

    def __call__(self, event: ProgressEvent) -> None:
        if not self.enabled:
            return
        if event.stage != self._stage:
            self.close()
            self._stage = event.stage
            self._bar = tqdm(total=event.total, desc=event.stage, file=sys.stderr, leave=True)
        bar = self._bar
        assert bar is not None
        if event.total is not None and bar.total != event.total:
            bar.total = event.total
        bar.n = event.done
        postfix = {k: f"{v:.4g}" for k, v in event.metrics.items()}
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
