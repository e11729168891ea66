"""What every config is built from: strict scalar types, the choice
literals (models, variants, profiles, devices, losses, export formats, row
sources) and the base classes and helpers of :mod:`models.config`."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Strict, ValidationError, create_model
from pydantic.fields import FieldInfo
from pydantic_core import InitErrorDetails, PydanticCustomError

# Numbers and switches are strict: "5", 5.5 or true for an int, "0.1" for a float are errors,
# as a JSON body or a CLI --set value.
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]
Bool = Annotated[bool, Strict()]

ModelName = Literal["sasrec", "gru4rec", "fmlp", "gnn", "cl4srec"]
Variant = Literal["original", "dr4sr", "dr4sr+"]
Profile = Literal["parity", "fixed"]
Device = Literal["auto", "cpu", "cuda"]
Loss = Literal["bce", "ce", "sampled_ce"]
ExportFormat = Literal["parquet", "jsonl", "csv", "inter", "txt"]
RowSourceName = Literal["original", "pattern", "regenerated"]

MODEL_NAMES: tuple[str, ...] = ModelName.__args__  # type: ignore[attr-defined]
VARIANTS: tuple[str, ...] = Variant.__args__  # type: ignore[attr-defined]
PROFILES: tuple[str, ...] = Profile.__args__  # type: ignore[attr-defined]
DEVICES: tuple[str, ...] = Device.__args__  # type: ignore[attr-defined]
LOSSES: tuple[str, ...] = Loss.__args__  # type: ignore[attr-defined]
EXPORT_FORMATS: tuple[str, ...] = ExportFormat.__args__  # type: ignore[attr-defined]
ABLATIONS = ("no_diversity", "patterns_only", "end_to_end")
# models.data.sequences.RowSource codes, by label (kept here so this module stays import-light)
ROW_SOURCES: dict[str, int] = {"original": 0, "pattern": 1, "regenerated": 2}


class _Config(BaseModel):
    """Unknown fields are errors; values are validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_default=False)

    def replace(self, **changes: Any):
        """A validated copy with ``changes`` applied (``dataclasses.replace`` for configs)."""
        return type(self).model_validate({**self._fields_set_values(), **changes})

    def _fields_set_values(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in type(self).model_fields}


class _Frozen(_Config):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _fail(loc: tuple[str | int, ...], message: str, value: Any, title: str) -> ValidationError:
    """A ValidationError located at ``loc`` (raised from a model validator, its
    location is kept, prefixed by the enclosing fields)."""
    return ValidationError.from_exception_data(
        title,
        [InitErrorDetails(type=PydanticCustomError("invalid_combination", message), loc=loc, input=value)],
    )


def _overrides_of(base: type[BaseModel], name: str, doc: str) -> type[BaseModel]:
    """A model with every field of ``base`` optional (``null``: the profile's
    value), keeping each field's type, range and description."""
    fields: dict[str, Any] = {}
    for field_name, info in base.model_fields.items():
        annotation = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
        extra = dict(info.json_schema_extra or {}) if isinstance(info.json_schema_extra, dict) else {}
        fields[field_name] = (
            Optional[annotation],  # noqa: UP045 - a runtime-built annotation
            FieldInfo(default=None, description=info.description, json_schema_extra=extra or None),
        )
    model = create_model(name, __base__=_Config, __doc__=doc, **fields)
    return model


def _set_values(model: BaseModel) -> dict[str, Any]:
    return {k: v for k, v in model if v is not None}
