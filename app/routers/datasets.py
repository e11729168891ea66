"""/datasets: upload, list, show, delete, download the regenerated data."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool

from app.datasets import dataset_prefix, job_prefix
from app.deps import PrincipalDep, ServicesDep, SessionDep
from app.downloads import MEDIA_TYPES, export_regenerated, stream_artifact
from app.errors import Conflict, responses
from app.ingest import UPLOAD_OPENAPI, ingest
from app.jobs import active_jobs_of, owned_dataset, regeneration_for
from app.orm import Dataset, Job
from app.schemas import DatasetList, DatasetOut, ExportFormat
from app.uploads import receive_upload

router = APIRouter(prefix="/datasets", tags=["datasets"])


def _render(ds: Dataset, validation_job_id: str | None = None) -> DatasetOut:
    out = DatasetOut.model_validate(ds)
    out.validation_job_id = validation_job_id
    out.links = {"self": f"/datasets/{ds.id}"}
    if validation_job_id:
        out.links["validation_job"] = f"/jobs/{validation_job_id}"
    if ds.status == "ready":
        out.links["regenerated"] = f"/datasets/{ds.id}/regenerated?format=parquet"
    return out


def _validation_job(session, dataset_id: str) -> str | None:
    return session.scalar(
        select(Job.id)
        .where(Job.dataset_id == dataset_id, Job.kind == "validate")
        .order_by(Job.created_at.desc())
        .limit(1)
    )


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
        **responses(401, 413, 415, 422, 503),
    },
)
async def upload_dataset(request: Request, services: ServicesDep, principal: PrincipalDep):
    upload = await receive_upload(
        request, services.settings.resolved_work_dir / "uploads", services.settings.max_upload_bytes
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
def list_datasets(
    session: SessionDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> DatasetList:
    where = Dataset.owner_id == principal.id
    rows = session.scalars(
        select(Dataset).where(where).order_by(Dataset.created_at.desc()).limit(limit).offset(offset)
    ).all()
    total = session.scalar(select(func.count()).select_from(Dataset).where(where)) or 0
    return DatasetList(
        items=[_render(d, _validation_job(session, d.id)) for d in rows], total=total
    )


@router.get(
    "/{dataset_id}", response_model=DatasetOut, summary="One dataset", responses=responses(401, 404)
)
def get_dataset(dataset_id: str, session: SessionDep, principal: PrincipalDep) -> DatasetOut:
    ds = owned_dataset(session, principal, dataset_id)
    return _render(ds, _validation_job(session, ds.id))


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
