"""The DR4SR regenerator: a seq2seq Transformer with K memories (spec §4).

Source ``[SOS] + s + [EOS]`` is encoded once; a "diversity promoter" MLP
turns every encoder position into K memories; a condition encoder over the
target picks a soft mixture of them (Gumbel-softmax) during training; the
decoder reads the mixture and emits ``[SOS] + p + [EOS]``. The embedding
table is tied between every input and the output projection.

Why the training step is fast (benchmarks/regenerator_train.py times the
reference's step in the same run; ours is >10x faster on CPU):

* the pairs of one source are batched together and each distinct source is
  encoded, and its K memories computed, once per batch (Beauty: 44,471
  pairs share 11,420 distinct sources; a batch holds ~5x fewer source
  tokens), see ``share_sources`` and :class:`PairBatches`;
* per-token work (projections, FFN, LayerNorm, memory MLP) runs on the
  *packed* real tokens only, for sources, targets and the condition encoder;
* attention pads per group of rows: a batch is sorted by source length
  (which changes no loss term) and split into a few groups, each padded to
  its own longest row instead of the longest source of the pair set;
* targets are padded to the longest pattern of the batch (<= alpha + 2),
  not to 20 columns;
* the restrictive softmax is computed against the (deduplicated) tokens of
  each source row instead of over all ``N + 3`` tokens and a dense mask: the
  masked full softmax gives exactly zero mass to every other token, so the
  loss is identical (``tests/regenerator`` checks this against the slow path);
* CPU dropout draws 8 random bits per element instead of one Mersenne
  Twister number (``F.dropout`` cost ~100x a multiply there); Adam is fused.

Token ids: 0 pad, 1..N items, SOS = N+1, EOS = N+2 (all derived from N, Q21).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from models.data.sequences import Sequences
from models.progress import Progress, ProgressEvent, no_progress

_CHOICES = {
    "encoder_mask_train": ("causal", "none"),
    "lr_schedule_per": ("batch", "epoch"),
    "decode_policy": ("parity", "bernoulli"),
    "original_rows": ("twice", "once"),
    "activation": ("gelu", "relu"),
    "device": ("auto", "cpu", "cuda"),
}


class RegeneratorInputError(ValueError):
    """Pairs, embeddings or a checkpoint that the regenerator cannot use."""


@dataclass(frozen=True)
class RegeneratorConfig:
    """Every hyper-parameter of spec §4-§5 plus the quirk flags of §10.

    The defaults reproduce the released scripts (``parity()``); ``fixed()``
    flips every quirk flag. Each flag is independent so its effect can be
    measured on its own.
    """

    d_model: int = 64
    n_heads: int = 2
    enc_layers: int = 2
    dec_layers: int = 2
    ffn_dim: int = 256
    dropout: float = 0.5
    activation: str = "gelu"
    layer_norm_eps: float = 1e-12
    init_std: float = 0.02
    num_memories: int = 5  # K
    cond_layers: int = 2
    cond_heads: int = 2
    cond_ffn_dim: int = 256
    cond_hidden: int = 64  # condition MLP d -> cond_hidden -> K
    tau_start: float = 1.0
    tau_decay: float = 0.995  # per training batch
    tau_min: float = 0.1
    entropy_weight: float = 1.0  # per-sample entropy of pi, minimised
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)
    adam_eps: float = 1e-9
    batch_size: int = 256
    epochs: int = 40
    seed: int = 2024
    max_src_len: int = 50  # rows of the shared position table (48 items + SOS + EOS)
    max_decode_len: int = 25  # tokens including SOS, so <= 24 decoded
    restrictive_steps: int = 2  # decode steps forced to be restrictive
    device: str = "auto"
    # Batch the pairs of one source together and encode each distinct source
    # once per batch (its encoder states and K memories serve all its
    # patterns). Not a quirk: each pair's loss term has the same distribution
    # (pairs of a source share encoder dropout masks within a step); False
    # batches pairs independently, as the released code does.
    share_sources: bool = True
    # -- quirk flags (spec §10) --------------------------------------------
    encoder_mask_train: str = "causal"  # Q5; inference is always bidirectional
    lr_schedule_per: str = "batch"  # Q8: cosine T_max=epochs stepped per batch
    decode_policy: str = "parity"  # Q2: "parity" = restrictive steps then always generative
    gamma: float = 0.5  # generative probability per step under "bernoulli"
    emit_pad: bool = True  # Q12: generative steps may emit the pad id 0
    drop_last_token: bool = True  # Q11: strip the last decoded token unconditionally
    original_rows: str = "twice"  # Q1: original training rows in the regenerated file

    def __post_init__(self) -> None:
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("d_model", "n_heads", "enc_layers", "dec_layers", "ffn_dim", "num_memories",
                     "cond_layers", "cond_heads", "cond_ffn_dim", "cond_hidden", "batch_size",
                     "epochs", "max_src_len", "max_decode_len"):
            if int(getattr(self, name)) != getattr(self, name) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.d_model % self.n_heads or self.d_model % self.cond_heads:
            raise ValueError(f"d_model {self.d_model} must be divisible by the head counts")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")
        if not (0 < self.tau_min <= self.tau_start and 0 < self.tau_decay <= 1):
            raise ValueError("need 0 < tau_min <= tau_start and 0 < tau_decay <= 1")
        if self.restrictive_steps < 0:
            raise ValueError(f"restrictive_steps must be >= 0, got {self.restrictive_steps}")
        if not 2 <= self.max_decode_len <= self.max_src_len:
            raise ValueError("max_decode_len must be in [2, max_src_len]: positions are shared")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))

    @classmethod
    def parity(cls, **overrides) -> RegeneratorConfig:
        """The released scripts' behaviour (every quirk kept)."""
        return cls(**overrides)

    @classmethod
    def fixed(cls, **overrides) -> RegeneratorConfig:
        """Every quirk flag flipped: bidirectional encoder in training, per-epoch
        cosine, per-step Bernoulli(gamma) decoding, no pad emission, EOS-only
        stripping, original rows once."""
        base = dict(encoder_mask_train="none", lr_schedule_per="epoch", decode_policy="bernoulli",
                    gamma=0.5, emit_pad=False, drop_last_token=False, original_rows="once")
        return cls(**{**base, **overrides})

    def to_dict(self) -> dict:
        out = asdict(self)
        out["betas"] = list(self.betas)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> RegeneratorConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown RegeneratorConfig keys: {sorted(unknown)}")
        return cls(**data)


def key_bias(valid: Tensor, dtype: torch.dtype) -> Tensor:
    """valid (B, S) bool, True = real token -> additive attention bias (B, 1, 1, S)."""
    return torch.zeros(valid.shape, dtype=dtype, device=valid.device).masked_fill_(
        ~valid, -math.inf)[:, None, None, :]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but CUDA is not available")
    return torch.device(name)


# -- building blocks ----------------------------------------------------------


def dropout_mask(shape: tuple[int, ...], p: float, like: Tensor) -> Tensor:
    """A dropout multiplier (0 or 1/(1-p)) of ``shape``, drawn from the global
    torch RNG with 8 or 16 random bits per element.

    Why: on CPU ``F.dropout``/``bernoulli_`` draw one Mersenne-Twister number
    per element and cost ~100x a multiply; with dropout 0.5 on every
    activation that dominated the training step. The keep probability is
    exact when ``p * 256`` is an integer (0.5 included), else rounded to 1/65536.
    """
    n = math.prod(shape)
    exact8 = float(p * 256).is_integer()
    span, per_word = (256, 8) if exact8 else (65536, 4)
    words = torch.empty((n + per_word - 1) // per_word, dtype=torch.int64, device=like.device)
    words.random_(-(2**63), None)  # full 64-bit range: every bit uniform
    u = words.view(torch.uint8 if exact8 else torch.int16)[:n].to(like.dtype)
    if not exact8:
        u += 32768
    cut = round(p * span)
    # floor((u + span - cut) / span) is 1 exactly when u >= cut
    keep = u.add_(span - cut).mul_(1.0 / span).floor_()
    return keep.mul_(1.0 / (1.0 - p)).view(shape)


def dropout(x: Tensor, p: float, training: bool, native: bool = False) -> Tensor:
    if not training or p == 0.0:
        return x
    if native or x.device.type != "cpu":  # the fused kernel is fast off-CPU
        return F.dropout(x, p, True)
    return x * dropout_mask(tuple(x.shape), p, x)


class Dropout(nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.native = False  # torch's kernel, see use_native_dropout

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training, self.native)


def use_native_dropout(model: nn.Module, native: bool = True) -> None:
    """Switch ``model`` to torch's own dropout kernels, as nn.Transformer uses
    them (dropout inside fused attention, F.dropout elsewhere). Same
    distribution, slower on CPU: used to time the reference faithfully."""
    for m in model.modules():
        if isinstance(m, Dropout | Attention):
            m.native = native


@dataclass
class Grid:
    """A group of batch rows whose tokens are padded together for attention.

    ``index`` holds flat positions ``r * length + s`` (r relative to
    ``rows``) of the packed token rows ``tokens``; None: not packed.
    """

    rows: slice
    tokens: slice
    length: int
    index: Tensor | None
    bias: Tensor | None = None  # self-attention bias (rows, 1, 1|length, length): 0 or -inf
    key_bias: Tensor | None = None  # key padding only (rows, 1, 1, length), for cross-attention

    def to_padded(self, x: Tensor) -> Tensor:  # (n, D) -> (R, S, D), zeros at pads
        r = self.rows.stop - self.rows.start
        if self.index is None:
            return x.view(r, self.length, -1)
        grid = x.new_zeros(r * self.length, x.shape[-1])
        return grid.index_copy(0, self.index, x).view(r, self.length, -1)

    def to_packed(self, y: Tensor) -> Tensor:  # (R, S, D) -> (n, D)
        flat = y.reshape(-1, y.shape[-1])
        return flat if self.index is None else flat.index_select(0, self.index)


@dataclass
class Layout:
    """Packed token rows of a ``(batch, length)`` batch: ``whole`` spans every
    row, ``groups`` split the rows for attention so that short rows are not
    padded to the longest one of the batch. Layouts built with the same
    batch size and group count split the rows at the same places, so the
    decoder's groups line up with the encoder's for cross-attention."""

    whole: Grid
    groups: list[Grid]

    @classmethod
    def dense(cls, batch: int, length: int) -> Layout:
        grid = Grid(slice(0, batch), slice(0, batch * length), length, None)
        return cls(grid, [grid])

    @classmethod
    def packed(cls, valid: Tensor, groups: int) -> Layout:
        """valid (B, S) bool, True = real token; rows ideally sorted by length."""
        b, s = valid.shape
        flat = valid.reshape(-1).nonzero().squeeze(1)  # (n,) flat positions of real tokens
        lengths = valid.sum(1).cpu().numpy()
        ends = np.cumsum(lengths)
        bounds = np.linspace(0, b, max(1, min(groups, b)) + 1).round().astype(int)
        out = []
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            width = max(1, int(lengths[lo:hi].max()))
            t0, t1 = (int(ends[lo - 1]) if lo else 0), int(ends[hi - 1])
            part = flat[t0:t1]
            out.append(Grid(slice(lo, hi), slice(t0, t1), width, (part // s - lo) * width + part % s))
        return cls(Grid(slice(0, b), slice(0, len(flat)), s, flat), out)

    def to_padded(self, x: Tensor) -> Tensor:
        return self.whole.to_padded(x)

    def to_packed(self, y: Tensor) -> Tensor:
        return self.whole.to_packed(y)

    def split_tokens(self, x: Tensor) -> tuple[Tensor, ...]:
        """x (n, D) -> one part per group. (A split, not a slice per group: a
        slice's backward builds a zero tensor of the whole input each time.)"""
        if len(self.groups) == 1:
            return (x,)
        return x.split([g.tokens.stop - g.tokens.start for g in self.groups])


class Attention(nn.Module):
    """Multi-head attention with nn.MultiheadAttention's parameters and init."""

    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.native = False  # torch's fused attention dropout, see use_native_dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d, d))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d))
        self.out_proj = nn.Linear(d, d)
        nn.init.xavier_uniform_(self.in_proj_weight)  # kept by the spec's init (§4.1)

    def split_heads(self, x: Tensor, parts: int) -> tuple[Tensor, ...]:
        """(B, S, parts*h*hd) -> ``parts`` contiguous (B, h, S, hd) tensors, one copy."""
        b, s, _ = x.shape
        return x.view(b, s, parts, self.heads, -1).permute(2, 0, 3, 1, 4).contiguous().unbind(0)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None,
               causal: bool = False) -> Tensor:
        """q (B, h, T, hd), k/v (B, h, S, hd) contiguous, bias additive (0 / -inf)
        broadcastable to (B, h, T, S) -> (B, T, h*hd)."""
        b, h, t, hd = q.shape
        s = k.shape[2]
        if causal:
            tri = torch.full((t, s), -math.inf, dtype=q.dtype, device=q.device).triu(1)
            bias = tri if bias is None else bias + tri
        if self.training and self.dropout > 0.0 and not self.native:
            # Spelled out so attention dropout uses the fast mask above; the
            # bias and the scale ride along in one baddbmm.
            # The scale goes on q (T x hd) rather than the scores (T x S), and the
            # bias is added in place with broadcasting: bmm's backward keeps its
            # inputs, not its output, and an expanded bias is never materialised.
            q3 = (q * hd**-0.5).reshape(b * h, t, hd)
            k3, v3 = k.reshape(b * h, s, hd), v.reshape(b * h, s, hd)
            scores = torch.bmm(q3, k3.transpose(1, 2))  # (B*h, T, S)
            if bias is not None:
                scores.view(b, h, t, s).add_(bias)
            out = torch.bmm(dropout(scores.softmax(-1), self.dropout, True), v3).view(b, h, t, hd)
        else:
            p = self.dropout if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)
        return out.transpose(1, 2).reshape(b, t, h * hd)


class EncoderLayer(nn.Module):
    """Post-LN Transformer encoder layer (nn.TransformerEncoderLayer semantics)."""

    def __init__(self, d: int, heads: int, ffn: int, dropout: float, act: str, eps: float) -> None:
        super().__init__()
        self.self_attn = Attention(d, heads, dropout)
        self.linear1, self.linear2 = nn.Linear(d, ffn), nn.Linear(ffn, d)
        self.norm1, self.norm2 = nn.LayerNorm(d, eps=eps), nn.LayerNorm(d, eps=eps)
        self.drop = Dropout(dropout)
        self.act = F.gelu if act == "gelu" else F.relu

    def ff(self, x: Tensor) -> Tensor:
        return self.linear2(self.drop(self.act(self.linear1(x))))

    def forward(self, x: Tensor, layout: Layout, causal: bool = False) -> Tensor:
        # x (n, d) packed token rows of `layout`; each group carries its bias
        sa = self.self_attn
        qkv = F.linear(x, sa.in_proj_weight, sa.in_proj_bias)  # (n, 3d)
        parts = []
        for g, part in zip(layout.groups, layout.split_tokens(qkv), strict=True):
            q, k, v = sa.split_heads(g.to_padded(part), 3)
            parts.append(g.to_packed(sa.attend(q, k, v, g.bias, causal)))
        x = self.norm1(x + self.drop(sa.out_proj(_cat(parts))))
        return self.norm2(x + self.drop(self.ff(x)))


class DecoderLayer(nn.Module):
    """Post-LN Transformer decoder layer (nn.TransformerDecoderLayer semantics)."""

    def __init__(self, d: int, heads: int, ffn: int, dropout: float, act: str, eps: float) -> None:
        super().__init__()
        self.self_attn = Attention(d, heads, dropout)
        self.cross_attn = Attention(d, heads, dropout)
        self.linear1, self.linear2 = nn.Linear(d, ffn), nn.Linear(ffn, d)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(d, eps=eps) for _ in range(3))
        self.drop = Dropout(dropout)
        self.act = F.gelu if act == "gelu" else F.relu
        self.d = d

    def ff(self, x: Tensor) -> Tensor:
        return self.linear2(self.drop(self.act(self.linear1(x))))

    def cross_kv(self, memory: Tensor, layout: Layout) -> list[tuple[Tensor, Tensor, Tensor | None]]:
        """Encoder-side rows (n, d) of ``layout`` -> per row group the cross-attention
        keys, values (R, h, S_g, hd) and key bias; computed once per source,
        projected before padding."""
        ca = self.cross_attn
        kv = F.linear(memory, ca.in_proj_weight[self.d:], ca.in_proj_bias[self.d:])  # (n, 2d)
        return [(*ca.split_heads(g.to_padded(part), 2), g.key_bias)
                for g, part in zip(layout.groups, layout.split_tokens(kv), strict=True)]

    def forward(self, y: Tensor, layout: Layout, cross: list[tuple[Tensor, Tensor, Tensor | None]]) -> Tensor:
        """y (n, d) packed target rows of ``layout``; ``cross`` per row group as
        from :meth:`cross_kv`. Causal self-attention needs no target key
        padding: real positions form a prefix of each row, so a real position
        never sees a pad."""
        sa, ca = self.self_attn, self.cross_attn
        qkv = F.linear(y, sa.in_proj_weight, sa.in_proj_bias)  # (n, 3d)
        parts = [g.to_packed(sa.attend(*sa.split_heads(g.to_padded(part), 3), causal=True))
                 for g, part in zip(layout.groups, layout.split_tokens(qkv), strict=True)]
        y = self.norm1(y + self.drop(sa.out_proj(_cat(parts))))
        q = F.linear(y, ca.in_proj_weight[: self.d], ca.in_proj_bias[: self.d])  # (n, d)
        parts = [g.to_packed(ca.attend(*ca.split_heads(g.to_padded(part), 1), k, v, bias))
                 for g, part, (k, v, bias) in zip(layout.groups, layout.split_tokens(q), cross, strict=True)]
        y = self.norm2(y + self.drop(ca.out_proj(_cat(parts))))
        return self.norm3(y + self.drop(self.ff(y)))


def _cat(parts: list[Tensor]) -> Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)


# -- the model ----------------------------------------------------------------


class Regenerator(nn.Module):
    """Spec §4.1. ``num_items`` = N; the vocabulary has N + 3 tokens."""

    def __init__(self, num_items: int, config: RegeneratorConfig,
                 item_embeddings: Tensor | None = None) -> None:
        super().__init__()
        if int(num_items) != num_items or num_items < 1:
            raise RegeneratorInputError(f"num_items must be a positive integer, got {num_items!r}")
        c = self.config = config
        self.num_items = int(num_items)
        self.sos, self.eos, self.vocab = self.num_items + 1, self.num_items + 2, self.num_items + 3
        d, k = c.d_model, c.num_memories
        layer_args = (c.n_heads, c.ffn_dim, c.dropout, c.activation, c.layer_norm_eps)
        self.embedding = nn.Embedding(self.vocab, d, padding_idx=0)
        self.position = nn.Embedding(c.max_src_len, d)
        self.input_drop = Dropout(c.dropout)
        self.encoder_layers = nn.ModuleList(EncoderLayer(d, *layer_args) for _ in range(c.enc_layers))
        self.encoder_norm = nn.LayerNorm(d, eps=c.layer_norm_eps)
        self.decoder_layers = nn.ModuleList(DecoderLayer(d, *layer_args) for _ in range(c.dec_layers))
        self.decoder_norm = nn.LayerNorm(d, eps=c.layer_norm_eps)
        self.promoter1, self.promoter2 = nn.Linear(d, d * k), nn.Linear(d * k, d * k)
        cond_args = (c.cond_heads, c.cond_ffn_dim, c.dropout, c.activation, c.layer_norm_eps)
        self.cond_layers = nn.ModuleList(EncoderLayer(d, *cond_args) for _ in range(c.cond_layers))
        self.cond_mlp = nn.Sequential(nn.Linear(d, c.cond_hidden), nn.ReLU(), nn.Linear(c.cond_hidden, k))
        self._init_weights(item_embeddings)

    def _init_weights(self, item_embeddings: Tensor | None) -> None:
        std = self.config.init_std
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, std)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, 0.0, std)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        with torch.no_grad():
            if item_embeddings is not None:
                expected = (self.num_items + 1, self.config.d_model)
                if tuple(item_embeddings.shape) != expected:
                    raise RegeneratorInputError(
                        f"item_embeddings must have shape {expected} (N+1 rows incl. padding), "
                        f"got {tuple(item_embeddings.shape)}")
                if not torch.isfinite(item_embeddings).all():
                    raise RegeneratorInputError("item_embeddings contain NaN or inf")
                self.embedding.weight[: self.num_items + 1] = item_embeddings.to(self.embedding.weight)
            self.embedding.weight[0].zero_()  # row 0 is padding and never learns

    # -- pieces shared with decoding ------------------------------------------
    def embed(self, tokens: Tensor, positions: Tensor) -> Tensor:
        return self.input_drop(self.embedding(tokens) + self.position(positions))

    def encode(self, src: Tensor, causal: bool, packed: bool = True,
               groups: int = 1) -> tuple[Tensor, Layout, Tensor]:
        """src (B, S) token ids, 0-padded on the right -> (encoder output rows
        (n, d) of the returned layout, key mask (B, S) True = real token).

        ``packed`` runs per-token work on real tokens only; ``groups`` > 1
        additionally pads self-attention per group of rows (efficient when
        the rows are sorted by length; correct in any order).
        """
        b, s = src.shape
        valid = src != 0
        layout = Layout.packed(valid, groups) if packed else Layout.dense(b, s)
        pos = torch.arange(s, device=src.device)
        if packed:
            index = layout.whole.index
            x = self.embed(src.reshape(-1).index_select(0, index), index % s)  # (n, d)
        else:
            x = self.embed(src.reshape(-1), pos.repeat(b))  # (B*S, d)
        pad_bias = key_bias(valid, x.dtype)  # (B, 1, 1, S)
        for g in layout.groups:
            width = g.length
            g.key_bias = g.bias = pad_bias[g.rows, :, :, :width]  # (R, 1, 1, S_g)
            if causal:  # built once here for both layers
                g.bias = g.bias + torch.full((width, width), -math.inf, dtype=x.dtype,
                                             device=src.device).triu(1)
        for layer in self.encoder_layers:
            x = layer(x, layout)
        return self.encoder_norm(x), layout, valid

    def memories(self, memory: Tensor) -> Tensor:
        """(..., d) encoder output -> (..., K, d) the K memories."""
        out = self.promoter2(F.relu(self.promoter1(memory)))
        return out.view(*memory.shape[:-1], self.config.num_memories, self.config.d_model)

    def mixed_memory(self, memory: Tensor, layout: Layout, pi: Tensor,
                     gather: Tensor | None = None) -> Tensor:
        """Soft mixture sum_k pi_bk M[b, s, k] of the K memories; pi (B, K),
        ``layout`` the pairs' source tokens -> (n, d). ``memory`` holds the
        encoder rows of ``layout`` or, with ``gather`` (n,), of the distinct
        sources, ``gather`` naming the row of each pair token.
        (Folding pi into promoter2 per example saves FLOPs but measured slower:
        the per-example (dK, d) weights cost more memory traffic than they save
        with ~15 tokens a row.)"""
        grid = layout.whole
        rows = grid.index // grid.length if grid.index is not None else \
            torch.arange(len(pi), device=pi.device).repeat_interleave(grid.length)
        mem = self.memories(memory)
        if gather is not None:
            mem = mem.index_select(0, gather)
        # An elementwise product and a sum over K: a bmm of (n, 1, K) x (n, K, d)
        # runs n tiny products and measured 3x slower, backward included.
        return (mem * pi[rows, :, None]).sum(1)

    def decode_hidden(self, emb: Tensor, layout: Layout, cross: list[list]) -> Tensor:
        """Full (uncached) decoder over embedded target rows (n, d) of ``layout``
        -> hidden (n, d); ``cross`` per layer as from DecoderLayer.cross_kv."""
        y = emb
        for layer, kv in zip(self.decoder_layers, cross, strict=True):
            y = layer(y, layout, kv)
        return self.decoder_norm(y)

    def condition(self, emb: Tensor, layout: Layout, real: Tensor, tau: float) -> Tensor:
        """emb (n, d) embedded target rows of ``layout`` -> pi (B, K), a Gumbel-softmax
        sample. The condition encoder is causal; its outputs are mean-pooled over
        ``real`` (B, T+1) = the [SOS] p [EOS] positions."""
        x = emb
        for layer in self.cond_layers:
            x = layer(x, layout, causal=True)
        keep = real.to(x.dtype)[..., None]  # (B, T+1, 1)
        pooled = (layout.to_padded(x) * keep).sum(1) / keep.sum(1)  # (B, d)
        return F.gumbel_softmax(self.cond_mlp(pooled), tau=tau, hard=False)

    # -- training objective -----------------------------------------------------
    def losses(self, src: Tensor, tgt: Tensor, tau: float, *, reference: bool = False,
               groups: int = 4, pair_src: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """src (B, S) = [SOS] s [EOS] 0..., tgt (B, T+1) = [SOS] p [EOS] 0...
        -> (token cross-entropy, mean per-sample entropy of pi).

        ``pair_src`` (B,) names the row of ``src`` that each target row pairs
        with; ``src`` then holds each distinct source once (any number of
        rows) and is encoded once. None: row i of ``src`` pairs with row i of
        ``tgt``. For the grouped attention to pad little, pairs should come
        sorted by source length (and ``src`` rows too).

        ``reference`` computes the released code's way (no packing, all K
        memories materialised, all N+3 logits under a dense mask); same
        value, used to check the fast path and to time the reference.
        """
        if pair_src is not None and reference:
            src, pair_src = src.index_select(0, pair_src), None  # one source row per pair
        causal = self.config.encoder_mask_train == "causal"
        packed = not reference
        groups = groups if packed else 1
        memory, layout, _ = self.encode(src, causal, packed, groups)
        gather = None
        if pair_src is not None:
            # The pairs' source tokens, laid out per pair; each token reads the
            # encoder row of its distinct source.
            width = src.shape[1]
            packed_row = torch.full((src.numel(),), -1, dtype=torch.long, device=src.device)
            packed_row[layout.whole.index] = torch.arange(len(layout.whole.index), device=src.device)
            src = src.index_select(0, pair_src)
            layout = Layout.packed(src != 0, groups)
            pad_bias = key_bias(src != 0, memory.dtype)  # cross-attention skips the pads
            for g in layout.groups:
                g.key_bias = pad_bias[g.rows, :, :, : g.length]
            flat = layout.whole.index
            gather = packed_row[pair_src[flat // width] * width + flat % width]
        b, t_full = tgt.shape
        emb = self.embed(tgt, torch.arange(t_full, device=tgt.device))  # (B, T+1, d)
        labels = tgt[:, 1:]  # (B, T), 0 = ignore
        real = tgt != 0
        if packed:  # condition encoder: [SOS] p [EOS]; decoder: the positions with a label
            cond_layout, dec_layout = Layout.packed(real, 1), Layout.packed(labels != 0, groups)
        else:
            cond_layout, dec_layout = Layout.dense(b, t_full), Layout.dense(b, t_full - 1)
        pi = self.condition(cond_layout.to_packed(emb), cond_layout, real, tau)
        mixed = self.mixed_memory(memory, layout, pi, gather)  # (n, d) over the pairs' tokens
        cross = [layer.cross_kv(mixed, layout) for layer in self.decoder_layers]
        h = self.decode_hidden(dec_layout.to_packed(emb[:, :-1]), dec_layout, cross)
        h = dec_layout.to_padded(h)  # (B, T, d)
        rec = (self._full_vocab_ce if reference else self._restricted_ce)(h, src, labels)
        entropy = -(pi * torch.log(pi + 1e-12)).sum(-1).mean()
        return rec, entropy

    def _restricted_ce(self, h: Tensor, src: Tensor, labels: Tensor) -> Tensor:
        # Allowed tokens = those of the source row (items, SOS, EOS) plus pad 0,
        # each counted once: sort, then mask repeats so duplicates in a source
        # do not add mass to the softmax.
        b = src.shape[0]
        cand, _ = torch.cat([src.new_zeros(b, 1), src], 1).sort(dim=1)  # (B, C)
        first = torch.ones_like(cand, dtype=torch.bool)
        first[:, 1:] = cand[:, 1:] != cand[:, :-1]
        table = F.embedding(cand, self.embedding.weight, padding_idx=0)  # (B, C, d)
        logits = torch.bmm(h, table.transpose(1, 2)).masked_fill(~first[:, None, :], -math.inf)
        target = torch.searchsorted(cand, labels.contiguous())  # first occurrence of the label
        target = target.masked_fill(labels == 0, -100)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))

    def _full_vocab_ce(self, h: Tensor, src: Tensor, labels: Tensor) -> Tensor:
        b, t, _ = h.shape
        logits = h @ self.embedding.weight.t()  # (B, T, N+3)
        allowed = torch.zeros_like(logits, dtype=torch.bool)
        allowed.scatter_(2, src[:, None, :].expand(b, t, src.shape[1]), True)
        allowed[..., 0] = True
        logits = logits.masked_fill(~allowed, -math.inf)
        return F.cross_entropy(logits.reshape(-1, self.vocab), labels.reshape(-1), ignore_index=0)


# -- data ---------------------------------------------------------------------


def check_pairs(src: Sequences, tgt: Sequences, num_items: int, max_src_len: int) -> None:
    """Raise RegeneratorInputError unless every pair is usable for training."""
    if len(src) != len(tgt):
        raise RegeneratorInputError(f"{len(src)} sources but {len(tgt)} targets")
    if len(src) == 0:
        raise RegeneratorInputError("no (sequence, pattern) pairs to train on")
    for name, seqs in (("source", src), ("target", tgt)):
        lengths = seqs.lengths
        if lengths.min() < 1:
            raise RegeneratorInputError(f"{name} row {int(np.argmin(lengths))} is empty")
        if lengths.max() + 2 > max_src_len:
            raise RegeneratorInputError(
                f"{name} row {int(np.argmax(lengths))} has {int(lengths.max())} items; "
                f"at most max_src_len - 2 = {max_src_len - 2} fit the position table")
        bad = (seqs.items < 1) | (seqs.items > num_items)
        if bad.any():
            raise RegeneratorInputError(
                f"{name} item id {int(seqs.items[bad][0])} is outside 1..{num_items}")
    # The restrictive softmax only covers source tokens: a target item missing
    # from its source would have zero probability (infinite loss).
    key = np.int64(num_items + 1)
    src_keys = np.repeat(np.arange(len(src)), src.lengths) * key + src.items
    tgt_keys = np.repeat(np.arange(len(tgt)), tgt.lengths) * key + tgt.items
    missing = ~np.isin(tgt_keys, src_keys)
    if missing.any():
        row = int(tgt_keys[missing][0] // key)
        raise RegeneratorInputError(f"pair {row}: target item {int(tgt.items[missing][0])} "
                                    "does not occur in its source sequence")


def wrap_tokens(seqs: Sequences, sos: int, eos: int) -> tuple[np.ndarray, np.ndarray]:
    """[SOS] + row + [EOS], right-padded with 0 -> ((n, max_len + 2) int64, lengths)."""
    lengths = seqs.lengths
    width = int(lengths.max(initial=0))
    out = np.zeros((len(seqs), width + 2), dtype=np.int64)
    out[:, 0] = sos
    out[:, 1 : width + 1] = seqs.pad(length=width)
    out[np.arange(len(seqs)), lengths + 1] = eos
    return out, lengths


# -- training -----------------------------------------------------------------


class PairBatches:
    """The training batches of (sequence, pattern) pairs, as token tensors.

    An epoch shuffles the pairs; with ``share_sources`` it then orders them
    by a shuffled rank of their source, so the pairs of one source are
    adjacent and mostly land in the same batch (a source is encoded once per
    batch that holds it). Every batch has ``batch_size`` pairs (the last one
    fewer). Inside a batch, rows are sorted by source length, which changes
    no loss term but lets attention pad per group of similar rows.
    """

    def __init__(self, src: Sequences, tgt: Sequences, sos: int, eos: int, batch_size: int,
                 share_sources: bool, device: torch.device) -> None:
        src_tok, self.src_len = wrap_tokens(src, sos, eos)
        tgt_tok, self.tgt_len = wrap_tokens(tgt, sos, eos)
        self.batch_size, self.share, self.device = batch_size, share_sources, device
        self.n = len(src)
        if share_sources:  # identical rows are one source, whichever user they came from
            uniq, inverse = np.unique(src_tok, axis=0, return_inverse=True)
            self.source_of = inverse.reshape(-1)
            self.uniq_len = self.src_len[np.unique(self.source_of, return_index=True)[1]]
            src_tok = uniq
        else:
            self.source_of = np.arange(self.n)
            self.uniq_len = self.src_len
        self.uniq_tok = torch.from_numpy(src_tok).to(device)
        self.tgt_tok = torch.from_numpy(tgt_tok).to(device)

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def epoch(self, rng: np.random.Generator):
        """Yield (src, tgt, pair_src or None) for every batch of one epoch."""
        order = rng.permutation(self.n)
        if self.share:
            rank = rng.permutation(len(self.uniq_len))
            order = order[np.argsort(rank[self.source_of[order]], kind="stable")]
        for i in range(len(self)):
            yield self.batch(order[i * self.batch_size : (i + 1) * self.batch_size])

    def batch(self, rows: np.ndarray) -> tuple[Tensor, Tensor, Tensor | None]:
        rows = rows[np.argsort(self.src_len[rows], kind="stable")]
        t_width = int(self.tgt_len[rows].max()) + 2
        tgt = self.tgt_tok[torch.from_numpy(rows).to(self.device), :t_width]
        if not self.share:
            s_width = int(self.src_len[rows].max()) + 2
            return self.uniq_tok[torch.from_numpy(rows).to(self.device), :s_width], tgt, None
        # Pairs are sorted by source length, so the distinct sources (in order
        # of first appearance) come sorted by length too.
        sources, first, pair_src = np.unique(self.source_of[rows], return_index=True, return_inverse=True)
        by_first = np.argsort(first, kind="stable")
        sources = sources[by_first]
        pair_src = np.argsort(by_first)[pair_src.reshape(-1)]
        s_width = int(self.uniq_len[sources].max()) + 2
        src = self.uniq_tok[torch.from_numpy(sources).to(self.device), :s_width]
        return src, tgt, torch.from_numpy(pair_src).to(self.device)



def train_regenerator(src: Sequences, tgt: Sequences, num_items: int, config: RegeneratorConfig,
                      item_embeddings: Tensor | None = None,
                      progress: Progress = no_progress) -> Regenerator:
    """Pre-train the regenerator on (sequence, pattern) pairs (spec §4.2-4.4).

    Seeds its own RNG streams from ``config.seed`` without touching the
    caller's global torch RNG state. Returns the final weights in eval mode.
    """
    check_pairs(src, tgt, num_items, config.max_src_len)
    device = resolve_device(config.device)
    fork = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork):
        torch.manual_seed(config.seed)
        model = Regenerator(num_items, config, item_embeddings).to(device)
        batches = PairBatches(src, tgt, model.sos, model.eos, config.batch_size, config.share_sources, device)
        opt = torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas,
                               eps=config.adam_eps, fused=True)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs)
        shuffle = np.random.default_rng(config.seed)
        per_epoch = len(batches)
        tau = config.tau_start
        model.train()
        for epoch in range(config.epochs):
            for i, (src_b, tgt_b, pair_src) in enumerate(batches.epoch(shuffle)):
                rec, ent = model.losses(src_b, tgt_b, tau, pair_src=pair_src)
                loss = rec + config.entropy_weight * ent
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                tau = max(tau * config.tau_decay, config.tau_min)
                if config.lr_schedule_per == "batch":
                    sched.step()
                progress(ProgressEvent("regenerator", epoch * per_epoch + i + 1, config.epochs * per_epoch,
                                       epoch=epoch + 1, metrics={"loss": rec.item(), "entropy": ent.item(),
                                                                 "tau": tau, "lr": opt.param_groups[0]["lr"]}))
            if config.lr_schedule_per == "epoch":
                sched.step()
    model.eval()
    return model


# -- persistence --------------------------------------------------------------

_WEIGHTS, _META = "regenerator.safetensors", "regenerator.json"


def save_regenerator(model: Regenerator, directory: str | Path) -> Path:
    """Write weights (safetensors) and config (JSON) into ``directory``; the JSON
    is written last, so a directory with it holds a complete checkpoint."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = directory / f".{_WEIGHTS}.tmp"
    save_file(state, str(tmp))
    tmp.replace(directory / _WEIGHTS)
    meta = {"format": 1, "num_items": model.num_items, "config": model.config.to_dict()}
    tmp = directory / f".{_META}.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(directory / _META)
    return directory


def load_regenerator(directory: str | Path, device: str | torch.device | None = None) -> Regenerator:
    """Rebuild a saved regenerator (eval mode) on ``device`` (default: config.device)."""
    directory = Path(directory)
    if not (directory / _META).exists() or not (directory / _WEIGHTS).exists():
        raise RegeneratorInputError(f"{directory} holds no regenerator checkpoint")
    meta = json.loads((directory / _META).read_text())
    if meta.get("format") != 1:
        raise RegeneratorInputError(f"unsupported regenerator checkpoint format {meta.get('format')!r}")
    config = RegeneratorConfig.from_dict(meta["config"])
    model = Regenerator(meta["num_items"], config)
    state = load_file(str(directory / _WEIGHTS))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RegeneratorInputError(f"checkpoint mismatch: missing {missing}, unexpected {unexpected}")
    target = resolve_device(config.device) if device is None else torch.device(device)
    return model.to(target).eval()
