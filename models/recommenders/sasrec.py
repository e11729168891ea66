"""SASRec: a causal Transformer encoder over item + position embeddings (spec §6.2).

Input ``Dropout(E[item] + P[pos])`` (no input LayerNorm, no √d scaling), then
``layer_num`` post-LN encoder layers (PyTorch ``TransformerEncoderLayer``
semantics, dropout on attention weights too), no final LayerNorm. The item
table is tied: it embeds the input and scores the output.

Rows are right-padded, so a causal mask alone gives every valid position
exactly the keys the reference's causal + key-padding mask allows (all earlier
positions are valid); padded positions are zeroed at the output. That lets the
attention run through ``F.scaled_dot_product_attention(is_causal=True)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.batching import Batch
from models.recommenders.base import (
    Dropout,
    ModelConfigError,
    RecommenderConfig,
    SequentialRecommender,
    check_probability,
    dropout,
    init_weights,
)

_ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}


@dataclass(frozen=True)
class SASRecConfig(RecommenderConfig):
    ffn_size: int = 128  # the reference's "hidden_size": inner width of the feed-forward block
    layer_num: int = 2
    head_num: int = 2
    dropout_rate: float = 0.5
    activation: str = "gelu"
    layer_norm_eps: float = 1e-12

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.embed_dim % self.head_num:
            raise ModelConfigError(
                f"embed_dim {self.embed_dim} is not divisible by head_num {self.head_num}"
            )
        if min(self.ffn_size, self.layer_num, self.head_num) < 1:
            raise ModelConfigError("ffn_size, layer_num and head_num must be >= 1")
        if self.activation not in _ACTIVATIONS:
            raise ModelConfigError(
                f"activation must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}"
            )
        check_probability(self, "dropout_rate")


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def reset_in_projection(self) -> None:
        # nn.MultiheadAttention keeps its in-projection as a raw parameter with
        # Xavier-uniform init, which the reference's Linear-only init never touches.
        nn.init.xavier_uniform_(self.qkv.weight)
        nn.init.zeros_(self.qkv.bias)

    def forward(self, x: Tensor, query: Tensor | None = None) -> Tensor:
        """x (B, T, d) -> (B, T, d); with ``query`` (B,) positions, only those rows'
        outputs (B, 1, d), each attending to keys up to its own position."""
        B, T, C = x.shape
        q, k, v = (
            self.qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        )  # 3 x (B, h, T, c)
        if query is not None:
            q = q[torch.arange(B, device=x.device), :, query].unsqueeze(2)  # (B, h, 1, c)
            allowed = torch.arange(T, device=x.device)[None, :] <= query[:, None]  # (B, T)
            y = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=allowed[:, None, None, :],
                dropout_p=self.dropout if self.training else 0.0,
            )  # (B, h, 1, c)
            T = 1
        elif self.training and self.dropout > 0 and not x.is_cuda:
            # SDPA's CPU dropout path is the math kernel with a slow bernoulli_;
            # the same computation with the cheaper mask of base.dropout
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))  # (B, h, T, T)
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).triu_(1)
            att = dropout(att.masked_fill(causal, float("-inf")).softmax(-1), self.dropout, True)
            y = att @ v  # (B, h, T, c)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
            )  # (B, h, T, c)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class EncoderLayer(nn.Module):
    """Post-LN: x = LN(x + Drop(Attn(x))); x = LN(x + Drop(W2 Drop(act(W1 x))))."""

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        d, p = config.embed_dim, config.dropout_rate
        self.attn = CausalSelfAttention(d, config.head_num, p)
        self.ln1 = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.fc1 = nn.Linear(d, config.ffn_size)
        self.fc2 = nn.Linear(config.ffn_size, d)
        self.ln2 = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.drop = Dropout(p)
        self.act = _ACTIVATIONS[config.activation]

    def forward(self, x: Tensor, query: Tensor | None = None) -> Tensor:
        """x (B, T, d) -> (B, T, d), or (B, 1, d) at positions ``query`` (B,)."""
        a = self.attn(x, query)
        if query is not None:
            x = x[torch.arange(x.shape[0], device=x.device), query].unsqueeze(1)  # (B, 1, d)
        x = self.ln1(x + self.drop(a))
        return self.ln2(x + self.drop(self.fc2(self.drop(self.act(self.fc1(x))))))


class CausalEncoder(nn.Module):
    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.layer_num))

    def reset_in_projections(self) -> None:
        for layer in self.layers:
            layer.attn.reset_in_projection()

    def forward(self, x: Tensor, query: Tensor | None = None) -> Tensor:
        """(B, T, d) -> (B, T, d); with ``query`` (B,), the outputs at those positions
        (B, 1, d): the last layer then skips every other position (ranking needs one)."""
        for i, layer in enumerate(self.layers):
            x = layer(x, query if i == len(self.layers) - 1 else None)
        return x


class SASRec(SequentialRecommender):
    name = "sasrec"
    config_class = SASRecConfig
    extra_tokens = 0  # rows of the item table after item N (CL4SRec's mask token)

    def __init__(self, num_items: int, config: SASRecConfig, **ctx: Any) -> None:
        super().__init__(num_items, config)
        d = config.embed_dim
        self.item_emb = nn.Embedding(num_items + 1 + self.extra_tokens, d, padding_idx=0)
        self.pos_emb = nn.Embedding(config.max_len, d)
        self.input_drop = Dropout(config.dropout_rate)
        self.encoder = CausalEncoder(config)
        init_weights(self)
        self.encoder.reset_in_projections()

    def item_embeddings(self) -> Tensor:
        if not self.extra_tokens:  # the whole table: no slice, whose backward copies the table
            return self.item_emb.weight  # (N + 1, d)
        return self.item_emb.weight[: self.num_items + 1]  # (N + 1, d)

    def input_table(self) -> Tensor:
        """The table that embeds input items (GNN swaps in its propagated table)."""
        return self.item_emb.weight

    def _embed(self, items: Tensor) -> Tensor:
        T = items.shape[1]
        if T > self.config.max_len:
            raise ModelConfigError(f"input width {T} exceeds max_len {self.config.max_len}")
        x = F.embedding(items, self.input_table(), padding_idx=0) + self.pos_emb.weight[:T]
        return self.input_drop(x)  # (B, T, d)

    def encode(self, items: Tensor, lengths: Tensor) -> Tensor:
        """items (B, T) right-padded, lengths (B,) -> (B, T, d), zero beyond lengths."""
        h = self.encoder(self._embed(items))  # (B, T, d)
        valid = torch.arange(items.shape[1], device=items.device)[None, :] < lengths[:, None]
        return h * valid.unsqueeze(-1).to(h.dtype)

    def forward(self, batch: Batch) -> Tensor:
        return self.encode(batch.input, batch.lengths)

    def last_hidden(self, batch: Batch) -> Tensor:
        """(B, d) at position seq_len - 1, computing the last layer there only."""
        last = (batch.lengths - 1).clamp(min=0)
        return self.encoder(self._embed(batch.input), query=last)[:, 0]
