"""Request and response bodies of the REST API (kept apart from the ORM rows)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.responses import Response

EXPORT_FORMATS = ("parquet", "jsonl", "csv", "inter", "txt")
ExportFormat = Literal["parquet", "jsonl", "csv", "inter", "txt"]
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JobKind = Literal["validate", "regenerate", "train", "compare"]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class CheckResult(BaseModel):
    ok: bool
    detail: str | None = None


class Ready(BaseModel):
    status: Literal["ready", "not_ready"]
    checks: dict[str, CheckResult] = Field(
        description="One entry per dependency: db, broker, storage."
    )


class DatasetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    filename: str
    format: str | None = Field(description="Input format, as given or detected.")
    status: Literal["validating", "ready", "invalid"] = Field(
        description="'validating' while a validation job runs on a large upload."
    )
    size_bytes: int
    sha256: str
    num_users: int | None
    num_items: int | None
    stats: dict[str, Any] | None = Field(description="Preprocessing statistics (k-core etc.).")
    options: dict[str, Any] = Field(description="Reader and preprocessing options used.")
    error: dict[str, Any] | None = Field(
        description="Why validation failed, when status is 'invalid'."
    )
    created_at: datetime
    updated_at: datetime
    validation_job_id: str | None = None
    links: dict[str, str] = Field(default_factory=dict)


class DatasetList(BaseModel):
    items: list[DatasetOut]
    total: int


class RegenerateRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "dataset_id": "6f1c8a52-2b1e-4c55-9d2a-0c5b8d0c1e7a",
                    "parameters": {
                        "alpha": 5,
                        "beta": 2,
                        "regenerator_epochs": 40,
                        "device": "auto",
                    },
                }
            ]
        },
    )
    dataset_id: str
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="RegenerationConfig fields (alpha, beta, max_pairs, pair_match, k_memories, "
        "profile ('fixed', the default, or 'parity'), pretrain_epochs, regenerator_epochs, seed, "
        "device, max_len, ...).",
    )


class TrainRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "dataset_id": "6f1c8a52-2b1e-4c55-9d2a-0c5b8d0c1e7a",
                    "data": "regenerated",
                    "model": "sasrec",
                    "personalize": True,
                    "parameters": {"epochs": 200, "patience": 10, "device": "auto"},
                }
            ]
        },
    )
    dataset_id: str
    data: Literal["original", "regenerated"] = Field(
        "original", description="Train on the original training rows or on a regenerated dataset."
    )
    regeneration_job_id: str | None = Field(
        None, description="Which regeneration to use; default: the latest successful one."
    )
    model: str = Field("sasrec", description="sasrec | gru4rec | fmlp | gnn | cl4srec")
    personalize: bool = Field(
        False, description="DR4SR+: learn per-row weights (the personalizer)."
    )
    parameters: dict[str, Any] = Field(default_factory=dict, description="TrainJobConfig fields.")

    @model_validator(mode="after")
    def _source_matches(self) -> TrainRequest:
        if self.regeneration_job_id is not None and self.data != "regenerated":
            raise ValueError("regeneration_job_id is only meaningful with data='regenerated'")
        return self


class CompareRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "dataset_id": "6f1c8a52-2b1e-4c55-9d2a-0c5b8d0c1e7a",
                    "models": ["sasrec", "gru4rec"],
                    "variants": ["original", "dr4sr", "dr4sr+"],
                    "parameters": {"epochs": 50},
                }
            ]
        },
    )
    dataset_id: str
    models: list[str] = Field(min_length=1, description="Target models to train.")
    variants: list[str] = Field(
        min_length=1, description="Training data variants: original | dr4sr | dr4sr+."
    )
    regeneration_job_id: str | None = Field(
        None, description="Regeneration for the dr4sr variants; default: the latest successful one."
    )
    parameters: dict[str, Any] = Field(default_factory=dict, description="TrainJobConfig fields.")


class StageProgress(BaseModel):
    done: int
    total: int | None
    fraction: float | None
    epoch: int | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    message: str | None = None


class JobProgress(BaseModel):
    stage: str | None = Field(description="The stage running now (or last run).")
    fraction: float = Field(description="Overall fraction 0..1 over the job kind's stages.")
    stages: dict[str, StageProgress]


class JobOut(BaseModel):
    id: str
    kind: JobKind
    state: JobState
    dataset_id: str
    regeneration_job_id: str | None
    queue: Literal["cpu", "gpu"]
    parameters: dict[str, Any]
    progress: JobProgress
    attempts: int
    max_attempts: int
    cancel_requested: bool
    error: dict[str, Any] | None = Field(description="{type, message} of a failed job.")
    result: dict[str, Any] | None = Field(description="Summary statistics of a finished job.")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    links: dict[str, str] = Field(
        description="self, cancel, and once succeeded the result downloads for this kind."
    )


class JobList(BaseModel):
    items: list[JobOut]
    total: int


def as_response(model: BaseModel, status_code: int = 200) -> Response:
    """``model`` as a finished JSON response. Returning a Response skips
    FastAPI's second validation of the body against ``response_model``, which
    it runs in the shared thread pool *after* the endpoint, while the
    request's database connection is still checked out; under load, endpoint
    threads waiting for connections could then starve the very step that
    releases them. (The route's ``response_model`` still documents it.)"""
    return Response(model.model_dump_json(), status_code, media_type="application/json")
