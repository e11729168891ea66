"""Every knob of the regeneration stage (spec §0.1): mining, pairs,
pre-training, profile, ablation and the nested regenerator overrides."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from models.config.base import Device, Float, Int, Profile, _Config, _fail, _set_values
from models.config.errors import error_message
from models.config.regenerator import RegeneratorConfig, RegeneratorOverrides


class RegenerationConfig(_Config):
    """Every knob of the regeneration stage (spec §0.1); defaults are the spec's."""

    model_config = ConfigDict(
        extra="forbid",
        validate_assignment=True,
        json_schema_extra={"examples": [{"alpha": 5, "regenerator_epochs": 40, "device": "auto"}]},
    )

    alpha: Int = Field(5, ge=2, le=10, description="Mining window: a pattern's items lie within alpha consecutive interactions (Seq2Pat max_span).")
    beta: Int | None = Field(
        None, ge=2, le=1_000_000,
        description="Minimum support: distinct sequences a pattern must occur in. null (the default): adaptive, the "
        "smallest beta >= 2 that keeps at most max_pattern_ratio x original rows of patterns (2 on the paper's sparse "
        "sets); a value set here is used as is.",
    )
    max_pattern_ratio: Float = Field(
        2.0, gt=0.0, le=1000.0,
        description="Budget of the adaptive beta: pattern rows at most this multiple of the original training rows "
        "(one per user). Ignored when beta is set.",
    )
    max_pairs: Int = Field(10, ge=1, le=1000, description="Patterns sampled per source sequence to build (sequence, pattern) pairs.")
    pair_match: Literal["anywhere", "window"] = Field(
        "anywhere", description="Where a pattern must occur in a source to pair with it: anywhere (released code) or within an alpha window."
    )
    k_memories: Int = Field(5, ge=1, le=64, description="K: memories of the regenerator's diversity promoter.")
    profile: Profile = Field(
        "fixed", description="Regenerator quirk profile: 'fixed' (quirks corrected, scored better on Beauty) or 'parity' (released code)."
    )
    pretrain_epochs: Int = Field(200, ge=0, le=1000, description="SASRec item-embedding pre-training epochs (early-stopped); 0 skips it.")
    pretrain_patience: Int = Field(10, ge=1, le=1000, description="Early-stopping patience of the pre-training, in epochs.")
    regenerator_epochs: Int = Field(40, ge=1, le=1000, description="Regenerator training epochs.")
    seed: Int = Field(2024, ge=0, le=2**32 - 1, description="Random seed of pairing, pre-training, training and decoding.")
    device: Device = Field("auto", description="auto (CUDA when available), cpu or cuda; also routes the job to the gpu or cpu queue.")
    max_len: Int = Field(50, ge=4, le=200, description="Window of the last max_len interactions per user (at most the regenerator's max_src_len).")
    world_size: Int = Field(
        1, ge=1, le=64, description="Data-parallel processes for pre-training and regenerator training (torch.distributed: NCCL on GPUs, gloo on CPU); 1: this process only."
    )
    valid_sample: Int | None = Field(
        None, ge=1, le=100_000_000, description="Pre-training validates on a fixed seeded sample of this many users each epoch; null: all users."
    )
    ablation: Literal["no_diversity", "patterns_only"] | None = Field(
        None, description="Paper ablations: 'no_diversity' (A, one memory), 'patterns_only' (B, the mined patterns are the data); null: none."
    )
    regenerator: RegeneratorOverrides = Field(  # type: ignore[valid-type]
        RegeneratorOverrides(), description="Regenerator hyper-parameters and quirk flags over the profile's values."
    )

    @model_validator(mode="after")
    def _consistent(self) -> RegenerationConfig:
        try:
            reg = self.regenerator_config()
        except ValidationError as exc:
            raise ValidationError.from_exception_data(
                type(self).__name__,
                [InitErrorDetails(type=PydanticCustomError(e["type"], error_message(e)), loc=("regenerator", *e["loc"]),
                                  input=e.get("input")) for e in exc.errors()],
            ) from None
        if self.max_len > reg.max_src_len and self.ablation != "patterns_only":
            raise _fail(
                ("max_len",),
                f"must be at most the regenerator's position table (regenerator.max_src_len = {reg.max_src_len}): "
                f"sources of up to max_len - 2 items plus SOS and EOS must fit; raise regenerator.max_src_len or lower max_len",
                self.max_len, type(self).__name__,
            )
        return self

    def regenerator_config(self) -> RegeneratorConfig:
        """The regenerator's full config: the profile's values, the top-level
        knobs (K, epochs, seed, device, ablation) and then explicit overrides."""
        overrides = _set_values(self.regenerator)
        # Ablation (A), "-diversity": a vanilla seq2seq regenerator. With one
        # memory the condition encoder's softmax is constant 1 and its entropy
        # term 0, so K = 1 is exactly the single-memory Transformer.
        overrides.setdefault("num_memories", self.k_memories)
        if self.ablation == "no_diversity":
            overrides["num_memories"] = 1
        overrides.setdefault("epochs", self.regenerator_epochs)
        overrides.setdefault("seed", self.seed)
        overrides.setdefault("device", self.device)
        overrides.setdefault("world_size", self.world_size)
        return RegeneratorConfig.for_profile(self.profile, **overrides)
