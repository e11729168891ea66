"""CL4SRec: SASRec plus a contrastive term over two augmented views (spec §6.2).

The item table has one extra row, the mask token ``N + 1``; it is never sampled
as a negative and never ranked (``item_embeddings()`` stops at row ``N``).
For each of the two views one operator is drawn uniformly *per batch*:

* crop: keep ``max(1, ⌊τ·len⌋)`` contiguous items from a random start;
* mask: replace ``⌊γ·len⌋`` random positions by the mask token;
* reorder: shuffle a random contiguous segment of ``⌊β·len⌋`` items.

Views go through the shared causal encoder, are mean-pooled over their valid
positions, and enter an InfoNCE loss (inner product / temperature, the ``2B-1``
in-batch candidates of both views, cross-entropy) weighted by ``cl_weight``.
Rows with a single input item are left out of that term. All augmentations
are vectorised tensor ops (no per-row Python), drawn from torch's RNG.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from models.batching import Batch
from models.recommenders.base import ModelConfigError, check_probability
from models.recommenders.sasrec import SASRec, SASRecConfig


@dataclass(frozen=True)
class CL4SRecConfig(SASRecConfig):
    # (τ, γ, β) defaults are the reference's Beauty values; Toys (0.2, 0.7, 0.2),
    # Sports (0.4, 0.4, 0.2), Yelp (0.4, 0.7, 0.2).
    crop_ratio: float = 0.2
    mask_ratio: float = 0.4
    reorder_ratio: float = 0.2
    temperature: float = 1.0
    cl_weight: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("crop_ratio", "mask_ratio", "reorder_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ModelConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not self.temperature > 0:
            raise ModelConfigError(f"temperature must be > 0, got {self.temperature}")
        if self.cl_weight < 0:
            raise ModelConfigError(f"cl_weight must be >= 0, got {self.cl_weight}")
        check_probability(self, "dropout_rate")


def crop(items: Tensor, lengths: Tensor, ratio: float) -> tuple[Tensor, Tensor]:
    """items (B, T) right-padded -> a contiguous random window of max(1, ⌊ratio·len⌋) items."""
    B, T = items.shape
    keep = torch.clamp(torch.floor(ratio * lengths.to(torch.float64)).long(), min=1)  # (B,)
    keep = torch.minimum(keep, lengths)
    start = (torch.rand(B, device=items.device) * (lengths - keep + 1)).long()  # (B,)
    pos = torch.arange(T, device=items.device)[None, :]  # (1, T)
    src = (start[:, None] + pos).clamp(max=T - 1)
    out = items.gather(1, src).masked_fill(pos >= keep[:, None], 0)
    return out, keep


def mask(items: Tensor, lengths: Tensor, ratio: float, mask_token: int) -> tuple[Tensor, Tensor]:
    """Replace ⌊ratio·len⌋ distinct random valid positions by ``mask_token``."""
    B, T = items.shape
    count = torch.floor(ratio * lengths.to(torch.float64)).long()  # (B,)
    pos = torch.arange(T, device=items.device)[None, :]
    noise = torch.rand(B, T, device=items.device).masked_fill(pos >= lengths[:, None], 2.0)
    rank = noise.argsort(dim=1).argsort(dim=1)  # (B, T) rank of each position, padding last
    return items.masked_fill(rank < count[:, None], mask_token), lengths


def reorder(items: Tensor, lengths: Tensor, ratio: float) -> tuple[Tensor, Tensor]:
    """Shuffle a random contiguous segment of ⌊ratio·len⌋ items in place."""
    B, T = items.shape
    seg = torch.floor(ratio * lengths.to(torch.float64)).long()  # (B,)
    start = (torch.rand(B, device=items.device) * (lengths - seg + 1)).long()
    pos = torch.arange(T, device=items.device)[None, :].expand(B, T)
    inside = (pos >= start[:, None]) & (pos < (start + seg)[:, None])
    # keys of segment members fall in (start - 0.5, start + 0.5), every other slot
    # keeps its integer position, so sorting permutes the segment and nothing else
    keys = torch.where(
        inside, start[:, None] - 0.5 + torch.rand(B, T, device=items.device), pos.to(torch.float32)
    )
    return items.gather(1, keys.argsort(dim=1)), lengths


def info_nce(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """z1, z2 (n, d) paired views -> mean cross-entropy over the 2n anchors,
    each against its partner among the other 2n - 1 vectors."""
    n = z1.shape[0]
    z = torch.cat([z1, z2])  # (2n, d)
    sim = (z @ z.T) / temperature  # (2n, 2n)
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, partner)


class CL4SRec(SASRec):
    name = "cl4srec"
    config_class = CL4SRecConfig
    extra_tokens = 1  # the mask token N + 1

    def __init__(self, num_items: int, config: CL4SRecConfig, **ctx: Any) -> None:
        super().__init__(num_items, config)
        self.mask_token = num_items + 1

    def augment(self, items: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        op = int(torch.randint(3, (1,)).item())  # one operator per batch and view
        c = self.config
        if op == 0:
            return crop(items, lengths, c.crop_ratio)
        if op == 1:
            return mask(items, lengths, c.mask_ratio, self.mask_token)
        return reorder(items, lengths, c.reorder_ratio)

    def pooled(self, items: Tensor, lengths: Tensor) -> Tensor:
        items = items[:, : int(lengths.max())]  # a crop leaves trailing all-padding columns
        h = self.encode(items, lengths)  # (n, T', d), zero beyond lengths
        return h.sum(1) / lengths.clamp(min=1)[:, None].to(h.dtype)  # (n, d)

    def auxiliary_loss(self, batch: Batch) -> Tensor | None:
        if self.config.cl_weight == 0:
            return None
        keep = batch.lengths > 1
        if int(keep.sum()) < 2:  # no in-batch negatives to contrast against
            return batch.input.new_zeros((), dtype=self.item_emb.weight.dtype)
        items, lengths = batch.input[keep], batch.lengths[keep]
        z1 = self.pooled(*self.augment(items, lengths))
        z2 = self.pooled(*self.augment(items, lengths))
        return self.config.cl_weight * info_nce(z1, z2, self.config.temperature)
