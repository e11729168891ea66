"""Every configuration of the pipeline, as typed pydantic models (no torch here).

One home for the knobs of regeneration (mining, pairs, pre-training, the
regenerator, decoding, profile, ablation), of target-model training, of the
DR4SR+ personalizer and of comparisons. The pipeline, the CLI (``--set
key=value``), the API (request bodies embed these models, so ``/openapi.json``
documents every field with its type, default, range and description) and the
workers all validate with these classes, and an invalid value reads the same
everywhere (:func:`describe_error`).

Importing this module must not import torch: the API process validates job
submissions with it and never loads a model.

Nested knobs are nested models. Where a nested group's defaults depend on a
profile (the regenerator's and the personalizer's ``parity`` / ``fixed``), the
nested model holds *overrides*: every field defaults to ``null``, meaning "the
profile's value".
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Annotated, Any, Literal, Optional

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import InitErrorDetails, PydanticCustomError

__all__ = [
    "ABLATIONS",
    "DEVICES",
    "EXPORT_FORMATS",
    "LOSSES",
    "MODEL_NAMES",
    "PROFILES",
    "ROW_SOURCES",
    "VARIANTS",
    "CompareConfig",
    "ModelOverrides",
    "PersonalizerConfig",
    "PersonalizerOptions",
    "RegenerationConfig",
    "RegeneratorConfig",
    "RegeneratorOverrides",
    "TrainConfig",
    "TrainJobConfig",
    "TrainParameters",
    "describe_error",
    "error_message",
    "error_path",
    "train_job_config",
]

# Numbers and switches are strict: "5", 5.5 or true for an int, "0.1" for a float are errors,
# as a JSON body or a CLI --set value.
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]
Bool = Annotated[bool, Strict()]

ModelName = Literal["sasrec", "gru4rec", "fmlp", "gnn", "cl4srec"]
Variant = Literal["original", "dr4sr", "dr4sr+"]
Profile = Literal["parity", "fixed"]
Device = Literal["auto", "cpu", "cuda"]
Loss = Literal["bce", "ce"]
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


# ---------------------------------------------------------------------------
# the regenerator (spec §4-§5, quirk flags of §10)
# ---------------------------------------------------------------------------


class RegeneratorConfig(_Frozen):
    """Every hyper-parameter of spec §4-§5 plus the quirk flags of §10.

    The defaults reproduce the released scripts (``parity()``); ``fixed()``
    flips every quirk flag. Each flag is independent so its effect can be
    measured on its own.
    """

    d_model: Int = Field(64, ge=1, le=4096, description="Width of the token embeddings and of every Transformer layer.")
    n_heads: Int = Field(2, ge=1, le=64, description="Attention heads of the encoder and decoder (must divide d_model).")
    enc_layers: Int = Field(2, ge=1, le=32, description="Encoder layers.")
    dec_layers: Int = Field(2, ge=1, le=32, description="Decoder layers.")
    ffn_dim: Int = Field(256, ge=1, le=65536, description="Inner width of the feed-forward blocks.")
    dropout: Float = Field(0.5, ge=0.0, lt=1.0, description="Dropout probability everywhere in the regenerator.")
    activation: Literal["gelu", "relu"] = Field("gelu", description="Feed-forward activation.")
    layer_norm_eps: Float = Field(1e-12, gt=0.0, le=0.1, description="LayerNorm epsilon.")
    init_std: Float = Field(0.02, gt=0.0, le=1.0, description="Standard deviation of the normal weight initialisation.")
    num_memories: Int = Field(5, ge=1, le=64, description="K: memories of the diversity promoter.")
    cond_layers: Int = Field(2, ge=1, le=32, description="Layers of the target-aware condition encoder.")
    cond_heads: Int = Field(2, ge=1, le=64, description="Attention heads of the condition encoder (must divide d_model).")
    cond_ffn_dim: Int = Field(256, ge=1, le=65536, description="Feed-forward width of the condition encoder.")
    cond_hidden: Int = Field(64, ge=1, le=65536, description="Hidden width of the condition MLP (d -> cond_hidden -> K).")
    tau_start: Float = Field(1.0, gt=0.0, le=100.0, description="Initial Gumbel-softmax temperature.")
    tau_decay: Float = Field(0.995, gt=0.0, le=1.0, description="Temperature decay per training batch.")
    tau_min: Float = Field(0.1, gt=0.0, le=100.0, description="Temperature floor (at most tau_start).")
    entropy_weight: Float = Field(1.0, ge=0.0, le=1000.0, description="Weight of the per-sample entropy of the memory mixture (minimised).")
    lr: Float = Field(1e-3, gt=0.0, le=1.0, description="Adam learning rate (cosine schedule).")
    betas: tuple[Annotated[float, Field(ge=0.0, lt=1.0)], Annotated[float, Field(ge=0.0, lt=1.0)]] = Field(
        (0.9, 0.98), description="Adam betas."
    )
    adam_eps: Float = Field(1e-9, gt=0.0, le=1.0, description="Adam epsilon.")
    batch_size: Int = Field(256, ge=1, le=65536, description="Pairs per training batch.")
    epochs: Int = Field(40, ge=1, le=1000, description="Regenerator training epochs.")
    seed: Int = Field(2024, ge=0, le=2**32 - 1, description="Random seed of regenerator training and decoding.")
    max_src_len: Int = Field(50, ge=3, le=1024, description="Rows of the shared position table: the longest source (items + SOS + EOS).")
    max_decode_len: Int = Field(25, ge=2, le=1024, description="Longest decoded sequence, SOS included (at most max_src_len).")
    restrictive_steps: Int = Field(2, ge=0, le=1024, description="Decoding steps forced to be restrictive (copy from the source).")
    device: Device = Field("auto", description="auto (CUDA when available), cpu or cuda.")
    world_size: Int = Field(
        1, ge=1, le=64, description="Data-parallel training processes (torch.distributed, models/distributed.py); 1: this process only. Decoding stays in one process."
    )
    share_sources: Bool = Field(
        True, description="Encode each distinct source once per batch for all its patterns (same loss; false batches pairs independently as the released code)."
    )
    encoder_mask_train: Literal["causal", "none"] = Field("causal", description="Q5: encoder mask while training (inference is always bidirectional).")
    lr_schedule_per: Literal["batch", "epoch"] = Field("batch", description="Q8: step the cosine schedule per batch (released code) or per epoch.")
    decode_policy: Literal["parity", "bernoulli"] = Field(
        "parity", description="Q2: 'parity' = restrictive steps then always generative; 'bernoulli' = generative with probability gamma per step."
    )
    gamma: Float = Field(0.5, ge=0.0, le=1.0, description="Probability of a generative step under decode_policy 'bernoulli'.")
    emit_pad: Bool = Field(True, description="Q12: generative steps may emit the pad id.")
    drop_last_token: Bool = Field(True, description="Q11: strip the last decoded token unconditionally (else only EOS).")
    original_rows: Literal["twice", "once"] = Field("twice", description="Q1: how often the original training rows appear in the regenerated file.")

    @model_validator(mode="after")
    def _consistent(self) -> RegeneratorConfig:
        for heads in ("n_heads", "cond_heads"):
            if self.d_model % getattr(self, heads):
                raise _fail((heads,), f"must divide d_model ({self.d_model}), got {getattr(self, heads)}",
                            getattr(self, heads), type(self).__name__)
        if self.tau_min > self.tau_start:
            raise _fail(("tau_min",), f"must be at most tau_start ({self.tau_start})", self.tau_min, type(self).__name__)
        if self.max_decode_len > self.max_src_len:
            raise _fail(("max_decode_len",), f"must be at most max_src_len ({self.max_src_len}): positions are shared",
                        self.max_decode_len, type(self).__name__)
        return self

    @classmethod
    def parity(cls, **overrides: Any) -> RegeneratorConfig:
        """The released scripts' behaviour (every quirk kept)."""
        return cls(**overrides)

    @classmethod
    def fixed(cls, **overrides: Any) -> RegeneratorConfig:
        """Every quirk flag flipped: bidirectional encoder in training, per-epoch
        cosine, per-step Bernoulli(gamma) decoding, no pad emission, EOS-only
        stripping, original rows once."""
        base = dict(encoder_mask_train="none", lr_schedule_per="epoch", decode_policy="bernoulli",
                    gamma=0.5, emit_pad=False, drop_last_token=False, original_rows="once")
        return cls(**{**base, **overrides})

    @classmethod
    def for_profile(cls, profile: str, **overrides: Any) -> RegeneratorConfig:
        return cls.parity(**overrides) if profile == "parity" else cls.fixed(**overrides)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (``betas`` as a list); ``model_validate`` reads it back."""
        return self.model_dump(mode="json")


RegeneratorOverrides = _overrides_of(
    RegeneratorConfig,
    "RegeneratorOverrides",
    "Overrides of the regenerator's hyper-parameters and quirk flags; null keeps the profile's value.",
)


# ---------------------------------------------------------------------------
# regeneration (spec §0.1)
# ---------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------
# target models
# ---------------------------------------------------------------------------
# Which model_overrides each model reads (its RecommenderConfig fields).
_BASE_FIELDS = ("embed_dim", "max_len", "weight_decay")
_SASREC_FIELDS = (*_BASE_FIELDS, "ffn_size", "layer_num", "head_num", "dropout_rate", "activation", "layer_norm_eps")
MODEL_FIELDS: dict[str, tuple[str, ...]] = {
    "sasrec": _SASREC_FIELDS,
    "gru4rec": (*_BASE_FIELDS, "rnn_size", "layer_num", "dropout_rate"),
    "fmlp": (*_BASE_FIELDS, "layer_num", "dropout_rate", "ffn_size", "layer_norm_eps"),
    "cl4srec": (*_SASREC_FIELDS, "crop_ratio", "mask_ratio", "reorder_ratio", "temperature", "cl_weight"),
    "gnn": (*_SASREC_FIELDS, "graph", "gnn_layer", "window", "normalization"),
}


class ModelOverrides(_Config):
    """Hyper-parameters of the target model; null keeps the model's default.
    Each field applies to the models named in its description."""

    embed_dim: Int | None = Field(None, ge=1, le=4096, description="Item table width (all models; SASRec-family: divisible by head_num).")
    max_len: Int | None = Field(None, ge=1, le=1024, description="Must equal the training max_len when set (all models).")
    weight_decay: Float | None = Field(None, ge=0.0, le=1.0, description="The model's default Adam weight decay (all models; GRU4Rec 1e-4, else 0).")
    ffn_size: Int | None = Field(None, ge=1, le=65536, description="Feed-forward width (sasrec, cl4srec, gnn, fmlp).")
    layer_num: Int | None = Field(None, ge=1, le=32, description="Layers (sasrec, cl4srec, gnn, fmlp, gru4rec).")
    head_num: Int | None = Field(None, ge=1, le=64, description="Attention heads (sasrec, cl4srec, gnn).")
    dropout_rate: Float | None = Field(None, ge=0.0, lt=1.0, description="Dropout probability (all but the defaults differ: 0.5, GRU4Rec 0.2).")
    activation: Literal["gelu", "relu"] | None = Field(None, description="Feed-forward activation (sasrec, cl4srec, gnn).")
    layer_norm_eps: Float | None = Field(None, gt=0.0, le=0.1, description="LayerNorm epsilon (sasrec, cl4srec, gnn, fmlp).")
    rnn_size: Int | None = Field(None, ge=1, le=65536, description="GRU state width (gru4rec).")
    crop_ratio: Float | None = Field(None, ge=0.0, le=1.0, description="Crop augmentation ratio (cl4srec).")
    mask_ratio: Float | None = Field(None, ge=0.0, le=1.0, description="Mask augmentation ratio (cl4srec).")
    reorder_ratio: Float | None = Field(None, ge=0.0, le=1.0, description="Reorder augmentation ratio (cl4srec).")
    temperature: Float | None = Field(None, gt=0.0, le=100.0, description="Contrastive softmax temperature (cl4srec).")
    cl_weight: Float | None = Field(None, ge=0.0, le=100.0, description="Weight of the contrastive loss (cl4srec).")
    graph: Literal["old", "new"] | None = Field(None, description="Item graph from the original rows ('old') or the whole training file ('new') (gnn).")
    gnn_layer: Int | None = Field(None, ge=1, le=16, description="Graph propagation layers (gnn).")
    window: Int | None = Field(None, ge=1, le=64, description="Co-occurrence window of the item graph (gnn).")
    normalization: Literal["reference", "symmetric"] | None = Field(None, description="Adjacency normalisation (gnn).")

    def set_values(self) -> dict[str, Any]:
        return _set_values(self)


class TrainConfig(_Config):
    """The trainer's knobs (models.training.train_model)."""

    model: ModelName = Field("sasrec", description="Target recommender.")
    model_overrides: ModelOverrides = Field(ModelOverrides(), description="The model's hyper-parameters over its defaults.")
    epochs: Int = Field(1000, ge=1, le=1000, description="Maximum epochs (early stopping on the monitored validation metric).")
    batch_size: Int = Field(256, ge=1, le=65536, description="Training rows per batch.")
    lr: Float = Field(1e-3, gt=0.0, le=1.0, description="Adam learning rate.")
    weight_decay: Float | None = Field(None, ge=0.0, le=1.0, description="Adam weight decay; null: the model's default (GRU4Rec 1e-4, else 0).")
    loss: Loss = Field("bce", description="'bce': one uniform negative per position; 'ce': full softmax over all items.")
    patience: Int = Field(20, ge=0, le=1000, description="Epochs without improvement before early stopping (0: never stop early).")
    seed: Int = Field(2023, ge=0, le=2**32 - 1, description="Random seed of initialisation, batching and negatives.")
    eval_batch: Int = Field(2048, ge=1, le=1_000_000, description="Users per evaluation batch.")
    device: Device = Field("auto", description="auto (CUDA when available), cpu or cuda; also routes the job to the gpu or cpu queue.")
    ks: tuple[Annotated[int, Field(ge=1, le=1000)], ...] = Field((10, 20), min_length=1, description="Cut-offs of the reported Recall@k and NDCG@k.")
    max_len: Int = Field(50, ge=4, le=200, description="Window of the last max_len interactions per user; the model's position table.")
    num_threads: Int | None = Field(None, ge=1, le=1024, description="CPU threads for torch; null: torch's default.")
    bucket_chunk: Int = Field(32, ge=0, le=100_000, description="Length bucketing inside chunks of this many batches (0: off).")
    monitor: str = Field("ndcg@20", pattern=r"^(ndcg|recall)@[1-9][0-9]*$", description="Validation metric for early stopping and the best epoch, e.g. ndcg@20 or recall@10.")
    item_chunk: Int | None = Field(None, ge=1, le=10_000_000, description="Items scored per evaluation chunk; null: sized to a fixed memory budget.")
    world_size: Int = Field(1, ge=1, le=64, description="Data-parallel training processes (torch.distributed, models/distributed.py); 1: this process only.")
    valid_sample: Int | None = Field(
        None, ge=1, le=100_000_000, description="Validate on a fixed seeded sample of this many users each epoch; null: all users (the test always ranks every user)."
    )

    @model_validator(mode="after")
    def _overrides_fit_model(self) -> TrainConfig:
        allowed = MODEL_FIELDS[self.model]
        for name in self.model_overrides.set_values():
            if name not in allowed:
                raise _fail(("model_overrides", name), f"{self.model} has no '{name}' (it reads {', '.join(allowed)})",
                            getattr(self.model_overrides, name), type(self).__name__)
        max_len = self.model_overrides.max_len
        if max_len is not None and max_len != self.max_len:
            raise _fail(("model_overrides", "max_len"), f"{max_len} disagrees with max_len {self.max_len}",
                        max_len, type(self).__name__)
        return self

    def model_config_overrides(self) -> dict[str, Any]:
        return {**self.model_overrides.set_values(), "max_len": self.max_len}

    def eval_ks(self) -> tuple[int, ...]:
        k = int(self.monitor.partition("@")[2])
        return tuple(sorted(set(self.ks) | {k}))

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON values (only the model overrides that are set);
        ``model_validate`` reads it back."""
        out = self.model_dump(mode="json")
        out["model_overrides"] = self.model_overrides.set_values()
        return out

    def train_config(self) -> TrainConfig:
        """The trainer's part (a subclass may carry more)."""
        return TrainConfig.model_validate({name: getattr(self, name) for name in TrainConfig.model_fields})


# ---------------------------------------------------------------------------
# DR4SR+ personalizer (spec §7, quirks Q3, Q14, Q15, Q16)
# ---------------------------------------------------------------------------
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
    meta_lr: Float = Field(1e-3, gt=0.0, le=10.0, description="Learning rate of the personalizer's SGD.")
    meta_momentum: Float = Field(0.9, ge=0.0, le=1.0, description="Momentum of the personalizer's SGD.")
    meta_weight_decay: Float = Field(1e-3, ge=0.0, le=1.0, description="Weight decay of the personalizer's SGD.")
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
        """Every quirk flag flipped: held-out dev targets, detached h, learnable τ,
        only regenerated rows re-weighted."""
        base = dict(dev_data="heldout", detach_hidden=True, learn_tau=True, weight_sources=frozenset({"regenerated"}))
        return cls(**{**base, **overrides})

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

    profile: Profile = Field("parity", description="'parity' (released code, the default) or 'fixed' (every DR4SR+ quirk flipped).")

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


# ---------------------------------------------------------------------------
# jobs: one training run, a comparison
# ---------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------
# one message for an invalid value, in the CLI and in the API
# ---------------------------------------------------------------------------
def error_message(error: Any) -> str:
    """A pydantic error's message without pydantic's 'Value error, ' prefix."""
    msg = str(error.get("msg", "invalid value"))
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    return msg


def error_path(loc: Iterable[Any], prefix: str = "") -> str:
    """``("regenerator", "k_memories")`` -> ``"regenerator.k_memories"`` (list
    positions as ``[i]``), under ``prefix`` when given."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part:
            out = f"{out}.{part}" if out else str(part)
    return out


def describe_error(exc: ValidationError, prefix: str = "") -> tuple[str | None, str]:
    """``(field path of the first error, one-line message)`` for a config's
    ValidationError; every error reads ``<path>: <message>``, joined by '; '."""
    errors = exc.errors()
    if not errors:
        return (prefix or None), str(exc)
    first = error_path(errors[0]["loc"], prefix) or None
    message = "; ".join(f"{error_path(e['loc'], prefix) or 'value'}: {error_message(e)}" for e in errors)
    return first, message
