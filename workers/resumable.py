"""Train jobs that survive their worker: the checkpoint's trip through the store.

:func:`models.pipeline.train` given a ``checkpoint_dir`` writes a resumable
``last.safetensors`` + ``last.json`` pair there after every epoch and, when it
finds one at start, continues from it. A worker's scratch folder dies with its
host, so :class:`CheckpointSync` copies that pair to the artifact store
(``jobs/<id>/resume/``, throttled); the next delivery of the job fetches it
back (:func:`fetch_checkpoint`) into the folder it hands to ``train`` again.
The copy is deleted once the job ends for good (:func:`drop_checkpoint`).
Training itself is not here: it is the one ``pipeline.train``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from app.core.storage import ArtifactStore, StorageError
from models.progress import Progress, ProgressEvent

log = logging.getLogger(__name__)

CHECKPOINT_FILES = ("last.safetensors", "last.json")


def resume_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/resume"


class CheckpointSync:
    """A progress callback that forwards events, then copies the trainer's
    newest checkpoint to the store when it changed (at most every
    ``interval_s``; the first one at once).

    The trainer writes the checkpoint synchronously between two events, so at
    callback time the pair on disk is complete and consistent."""

    def __init__(
        self,
        progress: Progress,
        local_dir: Path,
        store: ArtifactStore,
        prefix: str,
        interval_s: float,
    ) -> None:
        self.progress = progress
        self.local_dir = local_dir
        self.store = store
        self.prefix = prefix
        self.interval_s = interval_s
        self.synced_epoch: int | None = None
        self._synced_stamp: int | None = None
        self._last_sync = 0.0

    def __call__(self, event: ProgressEvent) -> None:
        # forward first: a cancelled job (the callback raises) uploads nothing more
        self.progress(event)
        try:
            self.maybe_sync()
        except StorageError as exc:
            # Resumability is lost, not the job: it goes on, tries again at the
            # next epoch, and its outputs' own write reports a lasting failure.
            log.warning("checkpoint copy to the store failed, training goes on: %s", exc)

    def maybe_sync(self) -> None:
        marker = self.local_dir / "last.json"
        try:
            stamp = marker.stat().st_mtime_ns
        except FileNotFoundError:
            return
        if stamp == self._synced_stamp:
            return
        now = time.monotonic()
        if self._synced_stamp is not None and now - self._last_sync < self.interval_s:
            return
        self.store.put_dir(self.local_dir, self.prefix)
        self._synced_stamp, self._last_sync = stamp, now
        self.synced_epoch = checkpoint_epoch(self.local_dir)


def checkpoint_epoch(local_dir: Path) -> int | None:
    """Epochs completed by the checkpoint in ``local_dir`` (None: no checkpoint)."""
    try:
        meta = json.loads((local_dir / "last.json").read_text())
    except FileNotFoundError:
        return None
    return int(meta["run"]["epoch"])


def fetch_checkpoint(store: ArtifactStore, job_id: str, local_dir: Path) -> int | None:
    """Copy an earlier attempt's checkpoint into ``local_dir``; returns its
    epoch count, or None when there is none (a fresh start)."""
    prefix = resume_prefix(job_id)
    keys = {k.rsplit("/", 1)[-1] for k in store.list(prefix)}
    local_dir.mkdir(parents=True, exist_ok=True)
    if not set(CHECKPOINT_FILES) <= keys:
        return None
    with store.local_dir(prefix) as folder:
        for name in CHECKPOINT_FILES:
            shutil.copyfile(folder / name, local_dir / name)
    return checkpoint_epoch(local_dir)


def drop_checkpoint(store: ArtifactStore, job_id: str) -> None:
    store.delete_prefix(resume_prefix(job_id))
