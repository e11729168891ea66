"""The DR4SR+ personalizer (spec §7, quirks Q3, Q14, Q15, Q16):
:class:`PersonalizerConfig` and the job-level :class:`PersonalizerOptions`
(a profile plus overrides)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from models.config.base import (
    ROW_SOURCES,
    Bool,
    Float,
    Int,
    Profile,
    RowSourceName,
    _fail,
    _Frozen,
    _overrides_of,
    _set_values,
)
from models.config.errors import error_message


def _source_names(value: Any) -> Any:
    """weight_sources: a collection of distinct names (the schema says uniqueItems)."""
    if isinstance(value, str):
        raise ValueError(f"must be a collection of source names, not the string {value!r}")
    if isinstance(value, list | tuple) and len(set(map(repr, value))) != len(value):
        raise ValueError("must not repeat a source")
    return value


class PersonalizerConfig(_Frozen):
    """The personalizer's hyper-parameters and quirk flags. ``parity()`` gives
    the released code, ``fixed()`` flips every flag."""

    warmup_epochs: Int = Field(
        10, ge=0, le=1000, description="Unweighted epochs first: weighting starts at epoch index warmup_epochs + 1 (the reference's e <= warmup)."
    )
    interval: Int = Field(30, ge=1, le=1_000_000, description="Inner training steps between meta steps (counted from the start, warm-up included).")
    hpo_lr: Float = Field(1e-3, ge=0.0, le=10.0, description="Neumann series step size alpha.")
    neumann_terms: Int = Field(3, ge=0, le=100, description="J: terms of the truncated Neumann series.")
    max_grad_norm: Float = Field(10.0, gt=0.0, le=1e6, description="Clip of the hypergradient's global norm.")
    tau_init: Float = Field(10.0, gt=0.0, le=1000.0, description="Initial Gumbel-softmax temperature of the weights (at least tau_min).")
    tau_min: Float = Field(1.0, gt=0.0, le=1000.0, description="Temperature floor.")
    meta_lr: Float = Field(1e-3, gt=0.0, le=10.0, description="Learning rate of the personalizer's optimiser (meta_optimizer).")
    meta_momentum: Float = Field(0.9, ge=0.0, le=1.0, description="Momentum of the personalizer's SGD (meta_optimizer sgd only).")
    meta_weight_decay: Float = Field(1e-3, ge=0.0, le=1.0, description="Weight decay of the personalizer's optimiser.")
    meta_optimizer: Literal["sgd", "adam"] = Field(
        "sgd",
        description="The personalizer's optimiser: 'sgd' with meta_momentum (the released code; parity profile) or 'adam' (fixed profile), whose step does not scale with the hypergradient's norm (about 0.01 on Amazon Beauty, where SGD at meta_lr 1e-3 leaves the weights at their initial 0.50).",
    )
    normalize: Bool = Field(
        False,
        description="Divide the weights of personalised positions by their mean over the batch: the personalizer can then only move weight between rows, not scale every row at once (the direction the hypergradient mostly points along), and DR4SR+ starts from DR4SR's unweighted loss. Weights then average 1 per batch and may exceed 1, as in learning-to-reweight. True in the fixed profile, false in parity.",
    )
    hidden: Int = Field(64, ge=1, le=65536, description="Hidden width of the personalizer MLP.")
    dev_data: Literal["train_batch", "heldout"] = Field(
        "train_batch", description="Q3: the 'dev' loss of the outer problem: another training batch (released code) or held-out validation targets."
    )
    detach_hidden: Bool = Field(False, description="Q16: stop the gradient between the target model and the personalizer.")
    learn_tau: Bool = Field(False, description="Q15: the temperature receives the hypergradient (floored at tau_min).")
    weight_sources: frozenset[RowSourceName] = Field(
        frozenset({"original", "regenerated"}),
        min_length=1,
        description="Q14: row sources whose rows are re-weighted; the others get weight 1.",
        json_schema_extra={"uniqueItems": True},
    )
    mode: Literal["bilevel", "end_to_end"] = Field(
        "bilevel", description="'bilevel' (DR4SR+) or 'end_to_end' (ablation C: the personalizer trained on the weighted training loss)."
    )

    @field_validator("weight_sources", mode="before")
    @classmethod
    def _not_a_string(cls, value: Any) -> Any:
        return _source_names(value)

    @model_validator(mode="after")
    def _consistent(self) -> PersonalizerConfig:
        if self.tau_init < self.tau_min:
            raise _fail(("tau_init",), f"({self.tau_init}) must be at least tau_min ({self.tau_min})",
                        self.tau_init, type(self).__name__)
        return self

    @classmethod
    def parity(cls, **overrides: Any) -> PersonalizerConfig:
        """The released MetaModel: dev = training batches, h not detached, τ frozen at 10,
        every non-pattern row re-weighted."""
        return cls(**overrides)

    @classmethod
    def fixed(cls, **overrides: Any) -> PersonalizerConfig:
        """Every quirk flag flipped (held-out dev targets, detached h, learnable
        τ, only regenerated rows re-weighted), with Adam and normalised weights
        so that the weights move at all (under the released SGD at meta_lr 1e-3
        they stay at their initial 0.50 on Amazon data)."""
        base = dict(dev_data="heldout", detach_hidden=True, learn_tau=True, weight_sources=frozenset({"regenerated"}),
                    meta_optimizer="adam", normalize=True)
        return cls(**{**base, **overrides})

    def nothing_to_weigh(self, counts: Mapping[str, int]) -> str | None:
        """Why DR4SR+ would re-weight no row of training rows with these
        ``counts`` per source (None when some row is weighted). The trainer
        refuses such rows; the API asks before queueing, from a
        regeneration's recorded counts."""
        if any(counts.get(source, 0) > 0 for source in self.weight_sources):
            return None
        return (f"no training row comes from a weighted source {sorted(self.weight_sources)} "
                f"(rows per source: {dict(counts)}): DR4SR+ would train a plain model at extra cost")

    @property
    def weighted_codes(self) -> tuple[int, ...]:
        return tuple(sorted(ROW_SOURCES[s] for s in self.weight_sources))

    def as_dict(self) -> dict[str, Any]:
        out = self.model_dump()
        out["weight_sources"] = sorted(self.weight_sources)
        return out


_PersonalizerFields = _overrides_of(PersonalizerConfig, "_PersonalizerFields", "")


class PersonalizerOptions(_PersonalizerFields):  # type: ignore[valid-type, misc]
    """DR4SR+: a profile and overrides of its values (null keeps the profile's value)."""

    profile: Profile = Field(
        "fixed",
        description="'fixed' (the default: every DR4SR+ quirk flipped, Adam and normalised weights, so the weights carry information) or 'parity' (the released code, whose weights stay at 0.50).",
    )

    @field_validator("weight_sources", mode="before")
    @classmethod
    def _sources(cls, value: Any) -> Any:
        return value if value is None else _source_names(value)

    @model_validator(mode="after")
    def _buildable(self) -> PersonalizerOptions:
        try:
            self.build()
        except ValidationError as exc:
            raise ValidationError.from_exception_data(
                type(self).__name__,
                [InitErrorDetails(type=PydanticCustomError(e["type"], error_message(e)), loc=tuple(e["loc"]),
                                  input=e.get("input")) for e in exc.errors()],
            ) from None
        return self

    def build(self) -> PersonalizerConfig:
        overrides = {k: v for k, v in _set_values(self).items() if k != "profile"}
        maker = PersonalizerConfig.parity if self.profile == "parity" else PersonalizerConfig.fixed
        return maker(**overrides)
