"""The regenerator's hyper-parameters and quirk flags (spec §4-§5, quirk
flags of §10): :class:`RegeneratorConfig` and its all-optional
:data:`RegeneratorOverrides`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from models.config.base import Bool, Device, Float, Int, _fail, _Frozen, _overrides_of


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
    order: Literal["any", "source"] = Field(
        "any",
        description="Which decodes become rows: 'any' (the released code) or 'source', only those whose items occur in their source sequence in the decoded order (a subsequence of it; items the source lacks are not checked). The copy steps do not enforce order: on Amazon Beauty about a third of the default regeneration's two-item rows reverse their source's order.",
    )

    copy_order: Literal["any", "forward"] = Field(
        "any",
        description="Which source items a decoding step may copy: 'any' (the released code: every item of the source not yet emitted) or 'forward', only items that stand after the last source item emitted, so that every decode follows its source's order (items the source lacks, from generative steps, leave the position where it was). Unlike order='source', no decode is dropped.",
    )

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
