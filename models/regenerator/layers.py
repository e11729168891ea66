"""The regenerator's Transformer layers (spec §4.1): post-LN encoder and decoder
layers with ``nn.TransformerEncoderLayer`` / ``nn.TransformerDecoderLayer``
semantics and parameter names, working on the packed token rows of a
:class:`~models.regenerator.packing.Layout`, plus the CPU dropout they use.

``tests/regenerator/test_layers_vs_torch.py`` copies their weights into
PyTorch's own layers and checks equal outputs and gradients in float64.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.regenerator.packing import Layout


def key_bias(valid: Tensor, dtype: torch.dtype) -> Tensor:
    """valid (B, S) bool, True = real token -> additive attention bias (B, 1, 1, S)."""
    return torch.zeros(valid.shape, dtype=dtype, device=valid.device).masked_fill_(
        ~valid, -math.inf)[:, None, None, :]


# -- dropout --------------------------------------------------------------------


def dropout_mask(shape: tuple[int, ...], p: float, like: Tensor) -> Tensor:
    """A dropout multiplier (0 or 1/(1-p)) of ``shape``, drawn from the global
    torch RNG with 8 or 16 random bits per element.

    Cheaper on CPU than ``F.dropout``, which draws one Mersenne-Twister number
    per element (figures: benchmarks/results/handwritten_kernels.md). The keep
    probability is exact when ``p * 256`` is an integer (0.5 included), else
    rounded to 1/65536.
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


# -- attention and layers ---------------------------------------------------------


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
            # Spelled out so attention dropout uses the fast mask above. The
            # scale goes on q and the bias is added in place, broadcast.
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
