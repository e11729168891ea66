"""/datasets: upload, list, show, delete, download the regenerated data."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy import Row, select
from starlette.concurrency import run_in_threadpool

from app import reads
from app.core.datasets import dataset_prefix, job_prefix
from app.core.orm import Dataset, Job
from app.deps import PrincipalDep, ServicesDep, SessionDep
from app.downloads import MEDIA_TYPES, export_regenerated, stream_artifact
from app.errors import Conflict, NotFound, responses
from app.ingest import UPLOAD_OPENAPI, ingest
from app.jobs import (
    active_jobs_of,
    is_id,
    owned_dataset,
    regeneration_for,
    upload_allowance,
)
from app.schemas import DatasetList, DatasetOut, ExportFormat, as_response
from app.uploads import receive_upload

router = APIRouter(prefix="/datasets", tags=["datasets"])


def _render(ds: Dataset | Row, validation_job_id: str | None = None) -> DatasetOut:
    # a Core row validates faster as a mapping than through attribute lookups
    out = DatasetOut.model_validate(ds._asdict() if isinstance(ds, Row) else ds)
    # (extra columns of a listing row, like its total count, are ignored)
    out.validation_job_id = validation_job_id
    out.links = {"self": f"/datasets/{ds.id}"}
    if validation_job_id:
        out.links["validation_job"] = f"/jobs/{validation_job_id}"
    if ds.status == "ready":
        out.links["regenerated"] = f"/datasets/{ds.id}/regenerated?format=parquet"
    return out


@router.post(
    "",
    status_code=201,
    response_model=DatasetOut,
    openapi_extra=UPLOAD_OPENAPI,
    summary="Upload an interaction log",
    description="Multipart upload, streamed to storage. Files up to the synchronous-validation "
    "size are read and preprocessed in the request: **201** with statistics, or **422** naming the "
    "file, line and column at fault (nothing is stored). Larger files are stored and validated by "
    "a job: **202** with `Location` of the dataset (status `validating`) and `validation_job_id`.",
    responses={
        202: {"model": DatasetOut, "description": "Stored; validation job queued."},
        **responses(401, 413, 415, 422, 503, 507),
    },
)
async def upload_dataset(request: Request, services: ServicesDep, principal: PrincipalDep):
    def allowance() -> tuple[int, str]:
        with services.sessions() as session:
            return upload_allowance(session, services.settings, principal.id)

    # Checked before the body is read, so an over-quota client gets its 413 at once.
    max_bytes, limit_text = await run_in_threadpool(allowance)
    upload = await receive_upload(
        request,
        services.settings.resolved_work_dir / "uploads",
        max_bytes,
        limit_description=limit_text,
    )
    try:
        dataset_id, job_id = await ingest(services, principal.id, upload)
    finally:
        upload.discard()

    def load() -> DatasetOut:
        with services.sessions() as session:
            ds = session.get(Dataset, dataset_id)
            assert ds is not None
            return _render(ds, job_id)

    body = await run_in_threadpool(load)
    headers = {"Location": f"/datasets/{dataset_id}"}
    status = 202 if job_id else 201
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers)


@router.get(
    "", response_model=DatasetList, summary="Your datasets, newest first", responses=responses(401)
)
async def list_datasets(
    services: ServicesDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> Response:
    rows, validation, total = await run_in_threadpool(
        reads.datasets, services.reader, principal.id, limit, offset
    )
    items = [_render(d, validation.get(d.id)) for d in rows]
    return as_response(DatasetList(items=items, total=total))


@router.get(
    "/{dataset_id}", response_model=DatasetOut, summary="One dataset", responses=responses(401, 404)
)
async def get_dataset(dataset_id: str, services: ServicesDep, principal: PrincipalDep) -> Response:
    found = None
    if is_id(dataset_id):
        found = await run_in_threadpool(reads.dataset, services.reader, principal.id, dataset_id)
    if found is None:
        raise NotFound(f"no dataset {dataset_id}", field="dataset_id")
    return as_response(_render(*found))


@router.delete(
    "/{dataset_id}",
    status_code=204,
    summary="Delete a dataset, its jobs and files",
    description="Refused with **409** while a queued or running job uses the dataset.",
    responses=responses(401, 404, 409),
)
def delete_dataset(
    dataset_id: str, session: SessionDep, principal: PrincipalDep, services: ServicesDep
) -> Response:
    ds = owned_dataset(session, principal, dataset_id, lock=True)
    active = active_jobs_of(session, ds.id)
    if active:
        raise Conflict(
            f"dataset {dataset_id} is used by active job(s) {', '.join(active)}; "
            "cancel them or wait for them to finish"
        )
    job_ids = list(session.scalars(select(Job.id).where(Job.dataset_id == ds.id)))
    session.delete(ds)
    session.commit()
    # Files go after the rows: a crash in between leaves orphan files, never
    # rows pointing at missing files.
    services.store.delete_prefix(dataset_prefix(dataset_id))
    for job_id in job_ids:
        services.store.delete_prefix(job_prefix(job_id))
    return Response(status_code=204)


@router.get(
    "/{dataset_id}/regenerated",
    response_class=StreamingResponse,
    summary="Download a regenerated dataset",
    description="The rows of the latest successful regeneration (or of `job`), in original ids, "
    "streamed in the requested format: parquet (row, user, source, items), jsonl, csv (long), "
    "RecBole inter, or txt (`row item item ...`).",
    responses={
        200: {
            "content": {
                MEDIA_TYPES[f].split(";")[0]: {}
                for f in ("parquet", "jsonl", "csv", "inter", "txt")
            }
        },
        **responses(401, 404, 409),
    },
)
async def download_regenerated(
    dataset_id: str,
    services: ServicesDep,
    principal: PrincipalDep,
    format: Annotated[ExportFormat, Query(description="Output format.")] = "parquet",
    job: Annotated[str | None, Query(description="A specific regeneration job id.")] = None,
) -> StreamingResponse:
    def find() -> str:
        with services.sessions() as session:
            ds = owned_dataset(session, principal, dataset_id)
            return regeneration_for(session, principal, ds, job).id

    job_id = await run_in_threadpool(find)
    artifact = await run_in_threadpool(export_regenerated, services, dataset_id, job_id, format)
    return stream_artifact(
        services.store, artifact, MEDIA_TYPES[format], f"{dataset_id}-regenerated.{format}"
    )
