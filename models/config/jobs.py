"""Job bodies: one training run (:class:`TrainJobConfig`, its request form
:data:`TrainParameters`) and a comparison (:class:`CompareConfig`)."""

from __future__ import annotations

import copy
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from models.config.base import Bool, Int, ModelName, Variant, _Config, _fail
from models.config.personalizer import PersonalizerConfig, PersonalizerOptions
from models.config.training import TrainConfig


class TrainJobConfig(TrainConfig):
    """One target-model training run: the trainer's knobs plus DR4SR+ and reporting."""

    model_config = ConfigDict(
        extra="forbid",
        validate_assignment=True,
        json_schema_extra={"examples": [{"epochs": 200, "patience": 10, "device": "auto"}]},
    )

    personalize: Bool = Field(False, description="DR4SR+: learn per-row weights with the personalizer (bi-level).")
    topk: Int = Field(100, ge=1, le=1000, description="Items per test user in the top-k download.")
    personalizer: PersonalizerOptions = Field(
        PersonalizerOptions(), description="DR4SR+ profile and hyper-parameters (used when personalize is true)."
    )

    @model_validator(mode="after")
    def _dr4sr_plus_in_one_process(self) -> TrainJobConfig:
        # The personalizer's meta-steps are not data-parallel (models/distributed.py)
        if self.personalize and self.world_size > 1:
            raise _fail(("world_size",), "DR4SR+ (personalize) trains in one process: world_size must be 1",
                        self.world_size, type(self).__name__)
        if self.finetune != "none" and self.personalize:
            raise _fail(("finetune",), "a second phase on the original rows does not combine with DR4SR+ (personalize)",
                        self.finetune, type(self).__name__)
        if self.row_filter in ("loss", "random") and self.personalize:
            raise _fail(("row_filter",), f"the row filter ({self.row_filter!r}) does not combine with DR4SR+ "
                        "(personalize): the personalizer already weighs regenerated rows by what they do to the model",
                        self.row_filter, type(self).__name__)
        return self

    def personalizer_config(self) -> PersonalizerConfig:
        return self.personalizer.build()


def _without(base: type[BaseModel], name: str, doc: str, drop: tuple[str, ...]) -> type[BaseModel]:
    fields = {k: (info.annotation, copy.copy(info)) for k, info in base.model_fields.items() if k not in drop}
    return create_model(name, __base__=_Config, __doc__=doc, **fields)


TrainParameters = _without(
    TrainJobConfig,
    "TrainParameters",
    "TrainJobConfig fields but model and personalize (a request names those itself).",
    ("model", "personalize"),
)


def train_job_config(parameters: BaseModel | dict[str, Any], **fixed: Any) -> TrainJobConfig:
    """The TrainJobConfig of request ``parameters`` (a TrainParameters) with the
    request's own fields (``model``, ``personalize``)."""
    values = parameters.model_dump(exclude_unset=True) if isinstance(parameters, BaseModel) else dict(parameters)
    return TrainJobConfig.model_validate({**values, **fixed})


class CompareConfig(_Config):
    """Which models, data variants and seeds a comparison trains."""

    models: list[ModelName] = Field(["sasrec"], min_length=1, max_length=5, description="Target models to train.")
    variants: list[Variant] = Field(
        ["original", "dr4sr", "dr4sr+"], min_length=1, max_length=3,
        description="Training data variants: original rows, DR4SR regenerated rows, DR4SR+ (regenerated rows + personalizer).",
    )
    seeds: list[Annotated[int, Field(ge=0, le=2**32 - 1)]] = Field(
        [2023], min_length=1, max_length=20, description="Training seeds; each model x variant is trained once per seed."
    )

    @field_validator("models", "variants", "seeds")
    @classmethod
    def _distinct(cls, value: list) -> list:
        if len(set(value)) != len(value):
            raise ValueError("must not repeat a value")
        return value
