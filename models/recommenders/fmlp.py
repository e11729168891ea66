"""FMLP-Rec: learnable frequency-domain filters instead of attention (spec §6.2).

``E[item] + P[pos] -> LayerNorm -> Dropout``, then ``layer_num`` blocks of
{ rFFT along time (orthonormal) · learnable complex filter -> irFFT -> Dropout ->
residual + LayerNorm } and { FFN d -> 4d (GELU, erf) -> d, Dropout, residual +
LayerNorm }. The query is the output at the last slot, so inputs are
left-padded to exactly ``max_len`` and every training row is expanded into
single-target prefixes by :class:`~models.batching.PrefixExpansion` (spec §1.5).
There is no padding mask: padded slots carry their position embedding and are
mixed by the filter, which is why the input width is always ``max_len``.
The filter has ``max_len // 2 + 1`` frequency bins (26 for 50), derived rather
than fixed (quirk Q17).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.batching import Batch, PrefixExpansion, RowTransform
from models.recommenders.base import (
    Dropout,
    ModelConfigError,
    RecommenderConfig,
    SequentialRecommender,
    check_probability,
    init_weights,
)


@dataclass(frozen=True)
class FMLPConfig(RecommenderConfig):
    layer_num: int = 2
    dropout_rate: float = 0.5
    ffn_size: int = 256
    layer_norm_eps: float = 1e-12

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.layer_num < 1 or self.ffn_size < 1:
            raise ModelConfigError("layer_num and ffn_size must be >= 1")
        check_probability(self, "dropout_rate")


class FilterLayer(nn.Module):
    def __init__(self, config: FMLPConfig) -> None:
        super().__init__()
        bins = config.max_len // 2 + 1
        # raw parameter (real, imaginary) with its own N(0, 0.02²) init, as in FMLP-Rec
        self.complex_weight = nn.Parameter(torch.randn(1, bins, config.embed_dim, 2) * 0.02)
        self.drop = Dropout(config.dropout_rate)
        self.ln = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)

    def forward(self, x: Tensor, last_only: bool = False) -> Tensor:
        """x (B, L, d) -> (B, L, d), or (B, 1, d) for the last slot only."""
        L = x.shape[1]
        spec = torch.fft.rfft(x, dim=1, norm="ortho")  # (B, L//2 + 1, d) complex
        spec = spec * torch.view_as_complex(self.complex_weight)
        y = torch.fft.irfft(spec, n=L, dim=1, norm="ortho")  # (B, L, d)
        if last_only:
            y, x = y[:, -1:], x[:, -1:]
        return self.ln(self.drop(y) + x)


class FeedForward(nn.Module):
    def __init__(self, config: FMLPConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.embed_dim, config.ffn_size)
        self.fc2 = nn.Linear(config.ffn_size, config.embed_dim)
        self.drop = Dropout(config.dropout_rate)
        self.ln = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.ln(self.drop(self.fc2(F.gelu(self.fc1(x)))) + x)


class FMLPRec(SequentialRecommender):
    name = "fmlp"
    config_class = FMLPConfig

    def __init__(self, num_items: int, config: FMLPConfig, **ctx: Any) -> None:
        super().__init__(num_items, config)
        d = config.embed_dim
        self.item_emb = nn.Embedding(num_items + 1, d, padding_idx=0)
        self.pos_emb = nn.Embedding(config.max_len, d)
        self.ln = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.drop = Dropout(config.dropout_rate)
        self.filters = nn.ModuleList(FilterLayer(config) for _ in range(config.layer_num))
        self.ffns = nn.ModuleList(FeedForward(config) for _ in range(config.layer_num))
        init_weights(self)

    def batch_transform(self) -> RowTransform:
        return PrefixExpansion(self.config.max_len)

    def item_embeddings(self) -> Tensor:
        return self.item_emb.weight  # (N + 1, d)

    def forward(self, batch: Batch) -> Tensor:
        """(B, 1, d): the output at the last slot of the left-padded input."""
        items = batch.input  # (B, L)
        L = self.config.max_len
        if items.shape[1] != L or not batch.left_padded:
            raise ModelConfigError(
                f"FMLP-Rec needs inputs left-padded to max_len={L} (PrefixExpansion), "
                f"got width {items.shape[1]}, left_padded={batch.left_padded}"
            )
        x = self.drop(self.ln(self.item_emb(items) + self.pos_emb.weight))  # (B, L, d)
        last = len(self.filters) - 1
        for i, (filt, ffn) in enumerate(zip(self.filters, self.ffns, strict=True)):
            # everything after the last filter is position-wise and only the last slot
            # is read: skip the other L - 1 positions of the final FFN (same output)
            x = ffn(filt(x, last_only=i == last))
        return x  # (B, 1, d)

    def last_hidden(self, batch: Batch) -> Tensor:
        return self(batch)[:, 0]  # (B, d)
