"""Dataset bookkeeping shared by the API (synchronous validation) and the
validation worker: storage keys, preprocessing options, status changes."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import delete
from sqlalchemy.orm import Session

from app.core.orm import Artifact, Dataset, utcnow
from app.core.storage import ArtifactStore, StoredObject

# Upload form fields forwarded to models.data.preprocess.prepare.
READER_OPTIONS = ("user_col", "item_col", "time_col", "has_header", "delimiter")
PREPROCESS_OPTIONS = ("user_core", "item_core", "max_len")
INPUT_FORMATS = ("csv", "tsv", "jsonl", "parquet", "inter", "txt")


def safe_filename(name: str | None) -> str:
    """The client's file name reduced to a harmless basename (extension kept:
    the readers detect formats from it)."""
    base = Path((name or "").replace("\\", "/")).name
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "upload"
    return base[-200:]


def raw_key(dataset_id: str, filename: str) -> str:
    return f"datasets/{dataset_id}/raw/{filename}"


def prepared_prefix(dataset_id: str) -> str:
    return f"datasets/{dataset_id}/prepared"


def dataset_prefix(dataset_id: str) -> str:
    return f"datasets/{dataset_id}"


def job_prefix(job_id: str) -> str:
    return f"jobs/{job_id}"


def artifact_name(key: str) -> str:
    """An artifact's name: its key relative to its owner's prefix
    (``datasets/<id>/`` or ``jobs/<id>/``)."""
    return key.split("/", 2)[2]


def artifact_key(artifact) -> str:
    owner = f"jobs/{artifact.job_id}" if artifact.job_id else f"datasets/{artifact.dataset_id}"
    return f"{owner}/{artifact.name}"


def prepare_kwargs(options: dict[str, Any], name: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"name": name}
    if options.get("format"):
        kwargs["format"] = options["format"]
    for key in READER_OPTIONS + PREPROCESS_OPTIONS:
        if options.get(key) is not None:
            kwargs[key] = options[key]
    return kwargs


def run_prepare(path: Path, options: dict[str, Any], name: str, progress=None):
    """Validate and preprocess an uploaded file (raises DataError subclasses)."""
    from models.data.preprocess import prepare
    from models.progress import no_progress

    return prepare(path, progress=progress or no_progress, **prepare_kwargs(options, name))


def summarize(prepared) -> dict[str, Any]:
    return {
        "users": int(prepared.num_users),
        "items": int(prepared.num_items),
        **dict(prepared.stats),
    }


def mark_ready(session: Session, dataset_id: str, prepared, stored: list[StoredObject]) -> None:
    ds = session.get(Dataset, dataset_id)
    if ds is None:
        return
    ds.status = "ready"
    ds.error = None
    ds.num_users = int(prepared.num_users)
    ds.num_items = int(prepared.num_items)
    ds.stats = _jsonable(dict(prepared.stats))
    ds.updated_at = utcnow()
    session.execute(
        delete(Artifact).where(Artifact.dataset_id == dataset_id, Artifact.kind == "prepared")
    )
    for obj in stored:
        session.add(
            Artifact(
                dataset_id=dataset_id,
                kind="prepared",
                name=artifact_name(obj.key),
                format=None,
                uri=obj.uri,
                size=obj.size,
                sha256=obj.sha256,
            )
        )


def mark_invalid(session: Session, store: ArtifactStore, dataset_id: str, message: str) -> None:
    """The upload could not be used: keep the row (with the reason) but drop
    every stored byte of it."""
    ds = session.get(Dataset, dataset_id)
    if ds is None:
        return
    ds.status = "invalid"
    ds.error = {"code": "invalid_data", "message": message}
    ds.updated_at = utcnow()
    session.execute(delete(Artifact).where(Artifact.dataset_id == dataset_id))
    store.delete_prefix(dataset_prefix(dataset_id))


@contextmanager
def loaded_dataset(store: ArtifactStore, dataset_id: str) -> Iterator[Any]:
    from models.data.preprocess import PreparedDataset

    with store.local_dir(prepared_prefix(dataset_id)) as folder:
        yield PreparedDataset.load(folder)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return value
