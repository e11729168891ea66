"""Turning an upload into a dataset: small files are validated inside the
request (a bad file is a 422 and nothing is stored), large ones are stored
and validated by a ``validate`` job."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from app.core.datasets import (
    artifact_name,
    dataset_prefix,
    mark_ready,
    prepared_prefix,
    raw_key,
    run_prepare,
    safe_filename,
)
from app.core.db import session_scope
from app.core.orm import Artifact, Dataset, new_id
from app.core.storage import StoredObject
from app.deps import Services
from app.errors import Invalid
from app.jobs import submit
from app.upload_checks import ContentLimits, check_upload
from app.uploads import ReceivedUpload


class UploadOptions(BaseModel):
    """The text fields accepted beside the file in ``POST /datasets``."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=200, description="Display name (default: file name).")
    format: Literal["csv", "tsv", "jsonl", "parquet", "inter", "txt"] | None = Field(
        None, description="Input format; detected from the extension/content when omitted."
    )
    user_col: str | None = Field(None, description="Column holding user ids (default user_id).")
    item_col: str | None = Field(None, description="Column holding item ids (default item_id).")
    time_col: str | None = Field(None, description="Column holding timestamps (default timestamp).")
    has_header: bool | None = Field(
        None, description="CSV/TSV: is the first line a header? (sniffed when omitted)"
    )
    delimiter: str | None = Field(None, max_length=1)
    user_core: int | None = Field(
        None, ge=1, le=1000, description="k-core threshold for users (5)."
    )
    item_core: int | None = Field(
        None, ge=1, le=1000, description="k-core threshold for items (5)."
    )
    max_len: int | None = Field(None, ge=4, le=1000, description="Window of the split (50).")


def _upload_openapi() -> dict:
    """The multipart request body for OpenAPI (the route streams the body
    itself, so FastAPI cannot infer it)."""
    fields = UploadOptions.model_json_schema()["properties"]
    keep = ("type", "description", "enum", "minimum", "maximum", "anyOf")
    properties = {
        "file": {
            "type": "string",
            "format": "binary",
            "description": "Interaction log: CSV/TSV/JSONL/Parquet/RecBole .inter/one-line "
            "sequences (.txt), optionally gzipped.",
        },
        **{name: {k: v for k, v in spec.items() if k in keep} for name, spec in fields.items()},
    }
    schema = {"type": "object", "required": ["file"], "properties": properties}
    return {
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}
    }


UPLOAD_OPENAPI = _upload_openapi()


def parse_options(fields: dict[str, str]) -> UploadOptions:
    values = {k: (v.strip() or None) for k, v in fields.items()}
    try:
        return UploadOptions.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or None
        raise Invalid(f"{field}: {err['msg']}", field=field) from None


def _format_label(options: dict, filename: str) -> str | None:
    """The format to show for a dataset: as given, else from the extension."""
    from models.data.readers import format_from_extension

    return options.get("format") or format_from_extension(filename)


_COLUMN_OPTIONS = ("user_col", "item_col", "time_col")


def _data_error_field(exc: Exception, options: dict | None = None) -> str:
    """The field a data error belongs to: ``file.<column>`` for a bad value,
    the column-mapping option when the column it names is missing (so a form
    can show the error beside that option), else ``file``."""
    column = getattr(exc, "column", None)
    message = getattr(exc, "message", "")
    if column is None and message.startswith("missing column(s)"):
        missing = message.split(";", 1)[0]
        for option in _COLUMN_OPTIONS:
            value = (options or {}).get(option)
            if isinstance(value, str) and f"'{value}'" in missing:
                return option
    return f"file.{column}" if column else "file"


def _add_rows(
    session,
    dataset_id: str,
    owner_id: int,
    upload: ReceivedUpload,
    filename: str,
    options: dict,
    name: str,
    raw: StoredObject,
) -> None:
    fmt = _format_label(options, filename)
    session.add(
        Dataset(
            id=dataset_id,
            owner_id=owner_id,
            name=name,
            filename=filename,
            format=fmt,
            status="validating",
            options=options,
            size_bytes=upload.size,
            sha256=upload.sha256,
        )
    )
    session.add(
        Artifact(
            dataset_id=dataset_id,
            kind="raw",
            name=artifact_name(raw.key),
            format=fmt,
            uri=raw.uri,
            size=raw.size,
            sha256=raw.sha256,
        )
    )
    session.flush()


def _store_validated(
    services: Services,
    owner_id: int,
    upload: ReceivedUpload,
    filename: str,
    options: dict,
    name: str,
    prepared,
) -> str:
    store = services.store
    dataset_id = new_id()
    try:
        raw = store.put_file(upload.path, raw_key(dataset_id, filename))
        with tempfile.TemporaryDirectory(dir=services.settings.resolved_work_dir) as tmp:
            prepared.save(Path(tmp) / "prepared")
            stored = store.put_dir(Path(tmp) / "prepared", prepared_prefix(dataset_id))
        with session_scope(services.sessions) as session:
            _add_rows(session, dataset_id, owner_id, upload, filename, options, name, raw)
            mark_ready(session, dataset_id, prepared, stored)
    except BaseException:
        store.delete_prefix(dataset_prefix(dataset_id))
        raise
    return dataset_id


def _store_pending(
    services: Services,
    owner_id: int,
    upload: ReceivedUpload,
    filename: str,
    options: dict,
    name: str,
) -> tuple[str, str]:
    store = services.store
    dataset_id = new_id()
    try:
        raw = store.put_file(upload.path, raw_key(dataset_id, filename))
        with session_scope(services.sessions) as session:
            _add_rows(session, dataset_id, owner_id, upload, filename, options, name, raw)
    except BaseException:
        store.delete_prefix(dataset_prefix(dataset_id))
        raise
    with services.sessions() as session:
        job = submit(
            session,
            services.celery,
            services.settings,
            owner_id=owner_id,
            dataset_id=dataset_id,
            kind="validate",
            parameters={"config": options},
            device="cpu",
        )
        return dataset_id, job.id


async def ingest(
    services: Services, owner_id: int, upload: ReceivedUpload
) -> tuple[str, str | None]:
    """Store a received upload as a dataset. Returns (dataset id, validation
    job id or None when it was validated synchronously)."""
    opts = parse_options(upload.fields)
    if upload.size == 0:
        raise Invalid("the uploaded file is empty", field="file")
    filename = safe_filename(upload.filename)
    options = opts.model_dump(exclude_none=True, exclude={"name"})
    name = opts.name or filename
    settings = services.settings
    limits = ContentLimits(
        settings.max_decompressed_bytes, settings.max_compression_ratio, settings.max_line_bytes
    )
    await run_in_threadpool(check_upload, upload.path, limits, filename)
    if upload.size > services.settings.sync_validation_max_bytes:
        return await run_in_threadpool(
            _store_pending, services, owner_id, upload, filename, options, name
        )

    # The reader detects formats from the extension: give the temp file the
    # client's name inside a private folder.
    from models.data.errors import DataError

    with tempfile.TemporaryDirectory(dir=services.settings.resolved_work_dir) as tmp:
        named = Path(tmp) / filename
        upload.path.rename(named)
        upload.path = named
        try:
            prepared = await run_in_threadpool(run_prepare, named, options, name)
        except DataError as exc:
            field = _data_error_field(exc, options)
            raise Invalid(str(exc), field=field, code="invalid_data") from None
        except ValueError as exc:
            raise Invalid(str(exc), field="file", code="invalid_data") from None
        dataset_id = await run_in_threadpool(
            _store_validated, services, owner_id, upload, filename, options, name, prepared
        )
    return dataset_id, None
