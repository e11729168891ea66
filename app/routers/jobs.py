"""/jobs: submit regenerate/train/compare, follow, cancel, download results."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from app import reads
from app.core.orm import Artifact, Job
from app.deps import PrincipalDep, ServicesDep, SessionDep
from app.downloads import MEDIA_TYPES, stream_artifact, tar_stream
from app.errors import Conflict, NotFound, responses
from app.jobs import (
    artifact_kinds,
    check_personalizable,
    is_id,
    owned_job,
    ready_dataset,
    regeneration_for,
    render,
    request_cancel,
    submit,
)
from app.jobs import (
    submit_compare as create_compare,
)
from app.schemas import (
    CompareRequest,
    JobKind,
    JobList,
    JobOut,
    JobState,
    RegenerateRequest,
    TrainRequest,
    as_response,
)

router = APIRouter(prefix="/jobs", tags=["jobs"])

_SUBMIT_RESPONSES = {
    202: {"description": "Queued; `Location` points at the job."},
    **responses(401, 404, 409, 422, 429, 503),
}


def _accepted(session, job: Job) -> JSONResponse:
    body = render(job, artifact_kinds(session, [job.id])[job.id])
    return JSONResponse(
        body.model_dump(mode="json"), status_code=202, headers={"Location": f"/jobs/{job.id}"}
    )


@router.post(
    "/regenerate",
    status_code=202,
    response_model=JobOut,
    responses=_SUBMIT_RESPONSES,
    summary="Regenerate a dataset (DR4SR)",
    description="Mines patterns, trains the regenerator and decodes a new training set. "
    "`parameters` are RegenerationConfig fields; unknown or out-of-range values are a 422 "
    "naming the field (e.g. `parameters.regenerator.d_model`).",
)
def submit_regenerate(
    body: RegenerateRequest, session: SessionDep, principal: PrincipalDep, services: ServicesDep
) -> JSONResponse:
    ds = ready_dataset(session, principal, body.dataset_id)
    job = submit(
        session,
        services.celery,
        services.settings,
        owner_id=principal.id,
        dataset_id=ds.id,
        kind="regenerate",
        parameters={"config": body.parameters.model_dump(mode="json", exclude_unset=True)},
        device=body.parameters.device,
    )
    return _accepted(session, job)


@router.post(
    "/train",
    status_code=202,
    response_model=JobOut,
    responses=_SUBMIT_RESPONSES,
    summary="Train a target recommender",
    description="On the original training rows or a regenerated dataset (the latest "
    "successful regeneration unless `regeneration_job_id` is given); `personalize` adds "
    "the DR4SR+ personalizer (refused with 422 when the personalizer would re-weight no row: "
    "the default `fixed` profile re-weights only regenerated rows).",
)
def submit_train(
    body: TrainRequest, session: SessionDep, principal: PrincipalDep, services: ServicesDep
) -> JSONResponse:
    ds = ready_dataset(session, principal, body.dataset_id)
    source = None
    if body.data == "regenerated":
        regeneration = regeneration_for(session, principal, ds, body.regeneration_job_id)
        if body.personalize:
            check_personalizable(regeneration, body.config().personalizer_config())
        source = regeneration.id
    parameters = {
        "data": body.data,
        "model": body.model,
        "personalize": body.personalize,
        "config": body.parameters.model_dump(mode="json", exclude_unset=True),
    }
    job = submit(
        session,
        services.celery,
        services.settings,
        owner_id=principal.id,
        dataset_id=ds.id,
        kind="train",
        parameters=parameters,
        device=body.parameters.device,
        source_job_id=source,
    )
    return _accepted(session, job)


@router.post(
    "/compare",
    status_code=202,
    response_model=JobOut,
    responses=_SUBMIT_RESPONSES,
    summary="Compare models x data variants x seeds, as child train jobs",
    description="Creates one compare job and one ordinary train job per model x variant x "
    "seed (listed in the compare's `parameters.children` and at `GET "
    "/jobs?parent_job_id=<id>`). The train jobs run in parallel on the free workers, each "
    "resumable from its own checkpoints; the compare job waits for them (`running`, its "
    "progress counting finished children), then aggregates their reports: mean ± sd over "
    "seeds and paired significance tests against the original data. If a train job fails or "
    "is cancelled, the compare fails and names it. Cancelling the compare cancels its train "
    "jobs. Where the loss filter runs (`parameters.row_filter`: the `auto` default with a softmax "
    "loss, or `loss`), the DR4SR train job scores the regenerated rows with the model of its "
    "sibling original-arm job (same model and seed), so it stays `queued` until that job ends "
    "and names it in `parameters.scorer_job_id`; the original arm is trained once. A compare counts as one job towards the per-principal limit.",
)
def submit_compare(
    body: CompareRequest, session: SessionDep, principal: PrincipalDep, services: ServicesDep
) -> JSONResponse:
    ds = ready_dataset(session, principal, body.dataset_id)
    source = None
    if any(v != "original" for v in body.variants):
        regeneration = regeneration_for(session, principal, ds, body.regeneration_job_id)
        if "dr4sr+" in body.variants:
            check_personalizable(regeneration, body.config().personalizer_config())
        source = regeneration.id
    job = create_compare(
        session,
        services.celery,
        services.settings,
        owner_id=principal.id,
        dataset_id=ds.id,
        models=list(body.models),
        variants=list(body.variants),
        seeds=list(body.seeds or [body.config().seed]),
        config=body.parameters.model_dump(mode="json", exclude_unset=True),
        device=body.parameters.device,
        source_job_id=source,
    )
    return _accepted(session, job)


@router.get("", response_model=JobList, summary="Your jobs, newest first", responses=responses(401))
async def list_jobs(
    services: ServicesDep,
    principal: PrincipalDep,
    state: Annotated[JobState | None, Query()] = None,
    kind: Annotated[JobKind | None, Query()] = None,
    dataset_id: Annotated[str | None, Query()] = None,
    parent_job_id: Annotated[
        str | None, Query(description="Only the train jobs of this compare job.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> Response:
    if (dataset_id and not is_id(dataset_id)) or (parent_job_id and not is_id(parent_job_id)):
        # names no dataset or job: nothing to list
        return as_response(JobList(items=[], total=0))

    def load():
        return reads.jobs(
            services.reader,
            principal.id,
            state=state,
            kind=kind,
            dataset_id=dataset_id,
            parent_job_id=parent_job_id,
            limit=limit,
            offset=offset,
        )

    rows, kinds, total = await run_in_threadpool(load)
    return as_response(JobList(items=[render(j, kinds[j.id]) for j in rows], total=total))


@router.get(
    "/{job_id}",
    response_model=JobOut,
    summary="One job: state, progress, error, links",
    responses=responses(401, 404),
)
async def get_job(job_id: str, services: ServicesDep, principal: PrincipalDep) -> Response:
    found = None
    if is_id(job_id):
        found = await run_in_threadpool(reads.job, services.reader, principal.id, job_id)
    if found is None:
        raise NotFound(f"no job {job_id}")
    return as_response(render(*found))


@router.post(
    "/{job_id}/cancel",
    response_model=JobOut,
    status_code=202,
    summary="Cancel a job (cooperatively)",
    description="A queued job is cancelled at once. A running job is flagged; the worker "
    "stops at its next progress step and records `cancelled`, storing nothing.",
    responses=responses(401, 404, 409),
)
def cancel_job(
    job_id: str, session: SessionDep, principal: PrincipalDep, services: ServicesDep
) -> Response:
    job = request_cancel(session, services.store, owned_job(session, principal, job_id))
    return as_response(render(job, set()), 202)


def _result(session, principal, job_id: str, *kinds: str) -> list[Artifact]:
    job = owned_job(session, principal, job_id)
    if job.state != "succeeded":
        raise Conflict(f"job {job_id} is {job.state}; results exist once it has succeeded")
    found = list(
        session.scalars(
            select(Artifact)
            .where(Artifact.job_id == job.id, Artifact.kind.in_(kinds))
            .order_by(Artifact.name)
        )
    )
    if not found:
        raise NotFound(f"a {job.kind} job has no {kinds[0]} result")
    return found


@router.get(
    "/{job_id}/report",
    summary="Evaluation report (JSON)",
    responses={200: {"content": {"application/json": {}}}, **responses(401, 404, 409)},
)
def job_report(
    job_id: str, session: SessionDep, principal: PrincipalDep, services: ServicesDep
) -> StreamingResponse:
    artifact = _result(session, principal, job_id, "report", "stats")[0]
    return stream_artifact(services.store, artifact, MEDIA_TYPES["json"])


@router.get(
    "/{job_id}/report.html",
    summary="Evaluation report (HTML)",
    responses={200: {"content": {"text/html": {}}}, **responses(401, 404, 409)},
)
def job_report_html(
    job_id: str, session: SessionDep, principal: PrincipalDep, services: ServicesDep
) -> StreamingResponse:
    artifact = _result(session, principal, job_id, "report_html")[0]
    return stream_artifact(services.store, artifact, MEDIA_TYPES["html"])


@router.get(
    "/{job_id}/topk",
    summary="Top-k recommendations per user (Parquet, original ids)",
    responses={
        200: {"content": {"application/vnd.apache.parquet": {}}},
        **responses(401, 404, 409),
    },
)
def job_topk(
    job_id: str, session: SessionDep, principal: PrincipalDep, services: ServicesDep
) -> StreamingResponse:
    artifact = _result(session, principal, job_id, "topk")[0]
    return stream_artifact(
        services.store, artifact, MEDIA_TYPES["parquet"], f"{job_id}-topk.parquet"
    )


@router.get(
    "/{job_id}/checkpoint",
    summary="Model weights + config as a tar stream",
    description="safetensors weights and their JSON config, archived on the fly.",
    responses={200: {"content": {"application/x-tar": {}}}, **responses(401, 404, 409)},
)
def job_checkpoint(
    job_id: str, session: SessionDep, principal: PrincipalDep, services: ServicesDep
) -> StreamingResponse:
    members = _result(session, principal, job_id, "checkpoint", "config")
    if not any(a.kind == "checkpoint" for a in members):
        raise NotFound(f"job {job_id} stored no model weights")
    entries = [(a.name.removeprefix("output/"), a) for a in members]
    session.close()  # the stream outlives the request's session
    return StreamingResponse(
        tar_stream(services.store, entries),
        media_type=MEDIA_TYPES["tar"],
        headers={"Content-Disposition": f'attachment; filename="{job_id}-checkpoint.tar"'},
    )
