"""Streaming results out of the artifact store: single files, a tar of a
checkpoint, and regenerated datasets converted to the requested format."""

from __future__ import annotations

import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from fastapi.responses import StreamingResponse
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app.core.datasets import artifact_key, loaded_dataset
from app.core.db import session_scope
from app.core.orm import Artifact
from app.core.storage import ArtifactStore
from app.deps import Services
from app.errors import NotFound

MEDIA_TYPES = {
    "parquet": "application/vnd.apache.parquet",
    "jsonl": "application/x-ndjson",
    "csv": "text/csv; charset=utf-8",
    "inter": "text/tab-separated-values; charset=utf-8",
    "txt": "text/plain; charset=utf-8",
    "json": "application/json",
    "html": "text/html; charset=utf-8",
    "tar": "application/x-tar",
}
BLOCK = tarfile.BLOCKSIZE


def stream_artifact(
    store: ArtifactStore, artifact: Artifact, media_type: str, download_name: str | None = None
) -> StreamingResponse:
    key = artifact_key(artifact)
    headers = {"Content-Length": str(artifact.size), "ETag": f'"{artifact.sha256}"'}
    if download_name:
        headers["Content-Disposition"] = f'attachment; filename="{download_name}"'
    return StreamingResponse(store.iter_bytes(key), media_type=media_type, headers=headers)


def tar_stream(store: ArtifactStore, members: list[tuple[str, Artifact]]) -> Iterator[bytes]:
    """A ustar archive generated on the fly: header, file bytes, padding per
    member, so nothing is staged on disk or in memory."""
    now = int(time.time())
    for arcname, artifact in members:
        info = tarfile.TarInfo(arcname)
        info.size = artifact.size
        info.mtime = now
        info.mode = 0o644
        yield info.tobuf(format=tarfile.PAX_FORMAT)
        sent = 0
        for chunk in store.iter_bytes(artifact_key(artifact)):
            sent += len(chunk)
            yield chunk
        if sent != artifact.size:
            raise OSError(f"{arcname}: stored size changed ({sent} != {artifact.size})")
        if artifact.size % BLOCK:
            yield b"\0" * (BLOCK - artifact.size % BLOCK)
    yield b"\0" * (2 * BLOCK)


def export_regenerated(services: Services, dataset_id: str, job_id: str, fmt: str) -> Artifact:
    """The regenerated rows of ``job_id`` in ``fmt`` with original ids,
    converted once and then served from the store."""
    name = f"exports/regenerated.{fmt}"
    with session_scope(services.sessions) as session:
        existing = session.scalar(
            select(Artifact).where(Artifact.job_id == job_id, Artifact.name == name)
        )
        if existing is not None and services.store.exists(artifact_key(existing)):
            return existing
        npz = session.scalar(
            select(Artifact).where(Artifact.job_id == job_id, Artifact.kind == "regenerated")
        )
        if npz is None:
            raise NotFound(f"job {job_id} stored no regenerated rows")
        npz_key = artifact_key(npz)

    from models.data.export import write_sequences
    from models.data.sequences import load_rows

    store = services.store
    with tempfile.TemporaryDirectory(dir=services.settings.resolved_work_dir) as tmp:
        out = Path(tmp) / f"regenerated.{fmt}"
        with store.local_file(npz_key) as path:
            rows = load_rows(path).without_pad()  # Q12 pad holes have no original id
        with loaded_dataset(store, dataset_id) as dataset:
            write_sequences(out, rows.seqs, dataset, fmt, source=rows.source, user=rows.user)
        stored = store.put_file(out, f"jobs/{job_id}/{name}")
    artifact = Artifact(
        job_id=job_id,
        kind="export",
        name=name,
        format=fmt,
        uri=stored.uri,
        size=stored.size,
        sha256=stored.sha256,
    )
    try:
        with session_scope(services.sessions) as session:
            session.execute(
                Artifact.__table__.delete().where(Artifact.job_id == job_id, Artifact.name == name)
            )
            session.add(artifact)
    except IntegrityError:  # a concurrent download registered the same export first
        with session_scope(services.sessions) as session:
            artifact = session.scalars(
                select(Artifact).where(Artifact.job_id == job_id, Artifact.name == name)
            ).one()
    return artifact
