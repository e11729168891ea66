"""GRU4Rec: ``E[item] -> Dropout -> multi-layer GRU without biases -> Linear`` (spec §6.2).

Trained on every position like SASRec; the query for ranking is the output at
``seq_len - 1``. Rows are right-padded, so the recurrence at valid positions
never sees padding and no packing is needed. Its Adam default carries an
L2-style weight decay of 1e-4 (read by the trainer from this config).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from models.batching import Batch
from models.recommenders.base import (
    Dropout,
    ModelConfigError,
    RecommenderConfig,
    SequentialRecommender,
    check_probability,
    init_weights,
)


@dataclass(frozen=True)
class GRU4RecConfig(RecommenderConfig):
    rnn_size: int = 256  # the reference's "hidden_size": GRU state width
    layer_num: int = 2
    dropout_rate: float = 0.2  # on the input embeddings only
    weight_decay: float = 1e-4

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rnn_size < 1 or self.layer_num < 1:
            raise ModelConfigError("rnn_size and layer_num must be >= 1")
        check_probability(self, "dropout_rate")


class GRU4Rec(SequentialRecommender):
    name = "gru4rec"
    config_class = GRU4RecConfig

    def __init__(self, num_items: int, config: GRU4RecConfig, **ctx: Any) -> None:
        super().__init__(num_items, config)
        d = config.embed_dim
        self.item_emb = nn.Embedding(num_items + 1, d, padding_idx=0)
        self.input_drop = Dropout(config.dropout_rate)
        self.gru = nn.GRU(
            d, config.rnn_size, num_layers=config.layer_num, bias=False, batch_first=True
        )
        self.out = nn.Linear(config.rnn_size, d)
        init_weights(self)  # the GRU's own weights keep PyTorch's init (spec §6.1)

    def item_embeddings(self) -> Tensor:
        return self.item_emb.weight  # (N + 1, d)

    def forward(self, batch: Batch) -> Tensor:
        items = batch.input  # (B, T)
        T = items.shape[1]
        if T > self.config.max_len:
            raise ModelConfigError(f"input width {T} exceeds max_len {self.config.max_len}")
        x = self.input_drop(self.item_emb(items))  # (B, T, d)
        states, _ = self.gru(x)  # (B, T, rnn_size)
        h = self.out(states)  # (B, T, d)
        valid = torch.arange(T, device=items.device)[None, :] < batch.lengths[:, None]  # (B, T)
        return h * valid.unsqueeze(-1).to(h.dtype)
