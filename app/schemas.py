"""Request and response bodies of the REST API (kept apart from the ORM rows)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError
from starlette.responses import Response

from models.config import EXPORT_FORMATS as EXPORT_FORMATS  # re-exported for the routers
from models.config import (
    CompareConfig,
    ModelName,
    RegenerationConfig,
    TrainJobConfig,
    TrainParameters,
    Variant,
    error_message,
    train_job_config,
)
from models.config import ExportFormat as ExportFormat

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


def _nested_error(loc: tuple[str, ...], exc: ValidationError, title: str) -> ValidationError:
    """Re-raise a config's ValidationError under ``loc`` of the request (so the
    422 names e.g. ``parameters.personalizer.tau_init``)."""
    return ValidationError.from_exception_data(
        title,
        [
            InitErrorDetails(
                type=PydanticCustomError(e["type"], error_message(e)),
                loc=(*loc, *e["loc"])
                if e["loc"] and e["loc"][0] not in ("model", "personalize")
                else tuple(e["loc"]),
                input=e.get("input"),
            )
            for e in exc.errors()
        ],
    )


def _invalid(loc: tuple[str, ...], message: str, value: Any, title: str) -> ValidationError:
    return ValidationError.from_exception_data(
        title,
        [
            InitErrorDetails(
                type=PydanticCustomError("invalid_combination", message), loc=loc, input=value
            )
        ],
    )


DATASET_ID = Field(
    description="The dataset's id (from POST /datasets).",
    examples=["6f1c8a52-2b1e-4c55-9d2a-0c5b8d0c1e7a"],
)


class RegenerateRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "dataset_id": "6f1c8a52-2b1e-4c55-9d2a-0c5b8d0c1e7a",
                    "parameters": {
                        "alpha": 5,
                        "regenerator_epochs": 40,
                        "device": "auto",
                    },
                }
            ]
        },
    )
    dataset_id: str = DATASET_ID
    parameters: RegenerationConfig = Field(
        RegenerationConfig(),
        description="Mining, pairing, pre-training, regenerator and decoding settings; every field is optional.",
    )


def _no_request_fields(data: Any) -> Any:
    """``model`` / ``personalize`` belong to the request, not to ``parameters``."""
    if isinstance(data, dict) and isinstance(data.get("parameters"), dict):
        for name in ("model", "personalize"):
            if name in data["parameters"]:
                raise _invalid(
                    ("parameters", name),
                    f"set it as the request's own '{name}' field",
                    data["parameters"][name],
                    "request",
                )
    return data


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
    dataset_id: str = DATASET_ID
    data: Literal["original", "regenerated"] = Field(
        "original", description="Train on the original training rows or on a regenerated dataset."
    )
    regeneration_job_id: str | None = Field(
        None, description="Which regeneration to use; default: the latest successful one."
    )
    model: ModelName = Field("sasrec", description="Target recommender.")
    personalize: bool = Field(
        False, description="DR4SR+: learn per-row weights (the personalizer)."
    )
    parameters: TrainParameters = Field(  # type: ignore[valid-type]
        TrainParameters(),
        description="Training settings (TrainJobConfig fields); every field is optional.",
    )

    _request_fields = model_validator(mode="before")(_no_request_fields)

    @model_validator(mode="after")
    def _consistent(self) -> TrainRequest:
        if self.regeneration_job_id is not None and self.data != "regenerated":
            raise ValueError("regeneration_job_id is only meaningful with data='regenerated'")
        config = self.config()
        if self.personalize and self.data == "original":
            weighted = config.personalizer_config().weight_sources
            if "original" not in weighted:
                raise _invalid(
                    ("parameters", "personalizer", "weight_sources"),
                    f"DR4SR+ on data='original' re-weights nothing: weight_sources {sorted(weighted)} "
                    "has no 'original' (the 'fixed' profile re-weights only regenerated rows); "
                    "train on data='regenerated' or add 'original'",
                    sorted(weighted),
                    type(self).__name__,
                )
        return self

    def config(self) -> TrainJobConfig:
        """The run's full TrainJobConfig (raises a ValidationError located in this request)."""
        try:
            return train_job_config(self.parameters, model=self.model, personalize=self.personalize)
        except ValidationError as exc:
            raise _nested_error(("parameters",), exc, type(self).__name__) from None


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
    dataset_id: str = DATASET_ID
    models: list[ModelName] = Field(
        min_length=1, max_length=5, description="Target models to train (each on every variant)."
    )
    variants: list[Variant] = Field(
        min_length=1,
        max_length=3,
        description="Training data variants: original rows, DR4SR regenerated rows, DR4SR+ "
        "(regenerated rows + personalizer).",
    )
    seeds: list[Annotated[int, Field(ge=0, le=2**32 - 1, strict=True)]] | None = Field(
        None,
        min_length=1,
        max_length=20,
        description="Training seeds: every model x variant is trained once per seed and the report gives "
        "mean and sd over them; null: the one seed of parameters.seed (2023).",
    )
    regeneration_job_id: str | None = Field(
        None, description="Regeneration for the dr4sr variants; default: the latest successful one."
    )
    parameters: TrainParameters = Field(  # type: ignore[valid-type]
        TrainParameters(),
        description="Training settings shared by every run (TrainJobConfig fields); every field is optional.",
    )

    _request_fields = model_validator(mode="before")(_no_request_fields)

    @model_validator(mode="after")
    def _consistent(self) -> CompareRequest:
        if self.seeds is not None and "seed" in self.parameters.model_fields_set:
            raise _invalid(
                ("parameters", "seed"),
                "set the seeds field instead",
                self.parameters.seed,
                type(self).__name__,
            )
        try:
            CompareConfig(
                models=self.models, variants=self.variants, seeds=self.seeds or [self.config().seed]
            )
        except ValidationError as exc:
            raise _nested_error((), exc, type(self).__name__) from None
        for model in self.models:
            try:
                train_job_config(
                    self.parameters, model=model, personalize="dr4sr+" in self.variants
                )
            except ValidationError as exc:
                raise _nested_error(("parameters",), exc, type(self).__name__) from None
        return self

    def config(self) -> TrainJobConfig:
        return train_job_config(self.parameters, model=self.models[0])


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
    parent_job_id: str | None = Field(
        None, description="The compare job this train job belongs to (null: a job of its own)."
    )
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
        description="self, cancel, parent (a compare's train job), children (a compare's "
        "train jobs) and, once succeeded, the result downloads for this kind."
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
