"""The contract every target recommender implements (spec §6.1).

Other stages code against these names: the DR4SR+ personalizer reads
``position_losses(...).hidden`` and re-weights ``loss``; the regeneration
pipeline reads ``item_embeddings()`` of a pre-trained SASRec; evaluation calls
``last_hidden`` and ``item_embeddings``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.batching import AllPositions, Batch, RowTransform
from models.config.base import LOSSES, Loss
from models.loss_scale import Denominator, reduce_position_loss

LossName = Loss  # the one list of losses, models.config.base


class ModelConfigError(ValueError):
    """A model name or a model hyper-parameter is unknown or out of range."""


@dataclass(frozen=True)
class RecommenderConfig:
    """Fields every model shares; each model subclasses this with its own."""

    embed_dim: int = 64  # d: item table width and width of the output vectors
    max_len: int = 50  # longest input the model reads (position table size)
    weight_decay: float = 0.0  # the trainer's Adam default for this model (GRU4Rec: 1e-4)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", int) and (isinstance(value, bool) or not isinstance(value, int)):
                raise ModelConfigError(
                    f"{type(self).__name__}.{f.name} must be an int, got {value!r}"
                )
            if f.type in ("float", float) and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                raise ModelConfigError(
                    f"{type(self).__name__}.{f.name} must be a number, got {value!r}"
                )
        if self.embed_dim < 1 or self.max_len < 1:
            raise ModelConfigError(
                f"embed_dim and max_len must be >= 1, got {self.embed_dim}, {self.max_len}"
            )
        if self.weight_decay < 0:
            raise ModelConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_overrides(cls, overrides: dict[str, Any] | None) -> RecommenderConfig:
        overrides = dict(overrides or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ModelConfigError(
                f"{cls.__name__}: unknown field(s) {unknown}; known: {sorted(known)}"
            )
        for name, value in overrides.items():
            if isinstance(value, list):  # JSON turns tuples into lists
                overrides[name] = tuple(value)
        return cls(**overrides)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; explicit CUDA must exist."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ModelConfigError(
            f"device must be 'auto', 'cpu' or 'cuda[:i]', got {str(device)!r}"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelConfigError(f"device {str(device)!r} requested but CUDA is not available")
    if dev.type not in ("cpu", "cuda"):
        raise ModelConfigError(f"device must be 'auto', 'cpu' or 'cuda[:i]', got {str(device)!r}")
    return dev


def check_probability(config: RecommenderConfig, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not 0.0 <= value < 1.0:
            raise ModelConfigError(f"{type(config).__name__}.{name} must be in [0, 1), got {value}")


def _keep_mask(shape: torch.Size, p: float, device: torch.device) -> Tensor:
    """Bernoulli(1 - p) mask from 16 random bits per element (p quantised to 2**-16)."""
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device)
    words.random_(-(2**63), 2**63 - 1)  # the full 64-bit range: four usable 16-bit draws
    threshold = round(p * 65536) - 32768
    return words.view(torch.int16)[:n].view(shape) >= threshold


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout, semantically ``F.dropout``.

    On CPU, ``F.dropout`` draws one float per element with ``bernoulli_``, which
    took about a third of a SASRec training step; slicing 64-bit random words
    into 16-bit draws is ~4x cheaper. CUDA keeps the fused kernel.
    """
    if not training or p == 0.0:
        return x
    if x.is_cuda:
        return F.dropout(x, p, True)
    keep = _keep_mask(x.shape, p, x.device).to(x.dtype).mul_(1.0 / (1.0 - p))
    return x * keep


class Dropout(nn.Module):
    """``nn.Dropout`` with the cheaper CPU mask of :func:`dropout`."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ModelConfigError(f"dropout probability must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


@dataclass
class PositionLoss:
    loss: Tensor  # (B, T) per-position loss, 0 where not valid
    valid: Tensor  # (B, T) bool, the positions that carry a target
    hidden: Tensor  # (B, T, d) the query vectors the scores were computed from


def init_weights(module: nn.Module) -> None:
    """Spec §6.1: N(0, 0.02²) for Embedding and Linear weights (padding row zeroed),
    zero biases, LayerNorm (1, 0). Other raw parameters keep their own init."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class SequentialRecommender(nn.Module):
    """Base class of the five target models.

    Subclasses set ``name`` and ``config_class`` and implement
    :meth:`item_embeddings` and :meth:`forward`.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[RecommenderConfig]] = RecommenderConfig
    #: training losses run the forward over this many length-sorted slices of
    #: the batch (:func:`sliced_forward`); the trainer sets it from
    #: ``TrainConfig.forward_slices``
    forward_slices: int = 1
    #: ``TrainConfig.num_negatives`` (loss 'sampled_ce'); the trainer sets it
    num_negatives: int = 1024

    def __init__(self, num_items: int, config: RecommenderConfig) -> None:
        super().__init__()
        if isinstance(num_items, bool) or not isinstance(num_items, int) or num_items < 1:
            raise ModelConfigError(f"num_items must be a positive int, got {num_items!r}")
        if not isinstance(config, self.config_class):
            raise ModelConfigError(
                f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}"
            )
        self.num_items = num_items
        self.config = config

    # -- the contract -----------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return self.config.embed_dim

    def item_embeddings(self) -> Tensor:
        """(num_items + 1, d): the scoring table, row 0 = padding."""
        raise NotImplementedError

    def forward(self, batch: Batch) -> Tensor:
        """(B, T, d) output vector per position, zero beyond each row's length."""
        raise NotImplementedError

    def batch_transform(self) -> RowTransform:
        """How training and evaluation rows are laid out for this model."""
        return AllPositions(self.config.max_len)

    def last_hidden(self, batch: Batch) -> Tensor:
        """(B, d): the query at position ``seq_len - 1``, used for ranking."""
        h = self(batch)  # (B, T, d)
        last = (batch.lengths - 1).clamp(min=0)
        return h[torch.arange(h.shape[0], device=h.device), last]

    def sample_negatives(self, target: Tensor) -> Tensor:
        """One uniform negative in 1..num_items per target slot (positives not excluded)."""
        return torch.randint(1, self.num_items + 1, target.shape, device=target.device)

    def position_losses(self, batch: Batch, loss: LossName = "bce") -> PositionLoss:
        h = sliced_forward(self, batch, self.forward_slices)  # (B, T, d)
        valid = batch.target != 0  # (B, T)
        table = self.item_embeddings()  # (N + 1, d)
        per = torch.zeros(valid.shape, dtype=h.dtype, device=h.device)
        if loss == "bce":
            negatives = self.sample_negatives(batch.target)  # (B, T): drawn for every slot, as always
            # scored only at valid positions (the gather and its sparse backward skip the padding),
            # one gather for positives and negatives: one sparse backward instead of two
            ids = torch.stack([batch.target[valid], negatives[valid]], -1)  # (V, 2)
            scores = (h[valid].unsqueeze(-2) * table[ids]).sum(-1)  # (V, 2)
            per[valid] = F.softplus(-scores[:, 0]) + F.softplus(scores[:, 1])
        elif loss == "ce":
            # full softmax only over valid positions: (V, N + 1) instead of (B, T, N + 1)
            logits = h[valid] @ table.T  # (V, N + 1)
            logits[:, 0] = float("-inf")
            per[valid] = F.cross_entropy(logits, batch.target[valid], reduction="none")
        elif loss == "sampled_ce":
            per[valid] = self._sampled_softmax_loss(h[valid], batch.target[valid], table)
        else:
            raise ModelConfigError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        return PositionLoss(per * valid, valid, h)

    def _sampled_softmax_loss(self, h: Tensor, target: Tensor, table: Tensor) -> Tensor:
        """(V,) cross-entropy of each position's target against ``num_negatives``
        items drawn uniformly without replacement, shared by the batch; a
        position's own target among them is masked, so with every item drawn
        this is the full softmax of loss 'ce'."""
        n = min(self.num_negatives, self.num_items)
        negatives = torch.randperm(self.num_items, device=h.device)[:n] + 1  # (S,)
        positive = (h * table[target]).sum(-1, keepdim=True)  # (V, 1)
        scores = (h @ table[negatives].T).masked_fill(negatives[None, :] == target[:, None], float("-inf"))
        logits = torch.cat([positive, scores], 1)  # (V, 1 + S): the target in column 0
        return torch.logsumexp(logits, 1) - positive.squeeze(1)

    def auxiliary_loss(self, batch: Batch) -> Tensor | None:
        """An extra, already weighted training term (CL4SRec's InfoNCE); None elsewhere."""
        return None

    def training_loss(
        self, batch: Batch, loss: LossName = "bce", positions: Denominator = None
    ) -> Tensor:
        """The batch's position losses reduced by ``positions``
        (:func:`models.loss_scale.reduce_position_loss`): None = the mean over
        its target positions; a number = their sum over that many positions
        (the epoch's mean per batch, ``TrainConfig.loss_scale='epoch'``);
        'row' = the mean over rows of each row's mean (``loss_scale='row'``)."""
        pl = self.position_losses(batch, loss)
        out = reduce_position_loss(pl.loss, pl.valid, positions)
        aux = self.auxiliary_loss(batch)
        return out if aux is None else out + aux

    # -- helpers ----------------------------------------------------------
    @staticmethod
    def length_mask(batch: Batch, width: int) -> Tensor:
        """(B, width) bool, True on the first ``lengths`` positions."""
        positions = torch.arange(width, device=batch.lengths.device)
        return positions[None, :] < batch.lengths[:, None]

    def extra_config(self) -> dict[str, Any]:
        """Data-derived settings a checkpoint must record to rebuild the model."""
        return {}


def slice_bounds(sorted_lengths: np.ndarray, slices: int) -> list[int]:
    """Where to cut rows sorted by length into at most ``slices`` contiguous
    slices so that the padded area (rows x longest row, summed over slices) is
    smallest: the end offset of every slice, the last one ``len(sorted_lengths)``.

    Rows of equal length never need to be parted, so the dynamic programme runs
    over the distinct lengths (at most ``max_len``), not over the rows.
    """
    values, counts = np.unique(np.asarray(sorted_lengths), return_counts=True)
    ends = np.cumsum(counts)  # rows with length <= values[j]
    u = len(values)
    best = (ends * values).astype(np.float64)  # one slice over the lengths up to values[j]
    cols = np.arange(u)
    earlier = np.tril(np.ones((u, u), dtype=bool))  # [i, j]: i >= j cannot end the previous slice
    choices = []  # per extra slice: the previous slice's last length index, or -1 (no gain)
    for _ in range(1, min(slices, u)):
        cand = best[:, None] + ((ends[None, :] - ends[:, None]) * values[None, :]).astype(np.float64)
        cand[earlier] = np.inf
        i = cand.argmin(0)
        better = cand[i, cols] < best
        choices.append(np.where(better, i, -1))
        best = np.where(better, cand[i, cols], best)
    bounds, j = [], u - 1
    for choice in reversed(choices):
        if choice[j] >= 0:
            bounds.append(int(ends[j]))
            j = int(choice[j])
    bounds.append(int(ends[j]))
    return sorted(bounds)


def sliced_forward(model: nn.Module, batch: Batch, slices: int) -> Tensor:
    """``model(batch)`` (B, T, d), computed over at most ``slices`` slices of the
    batch's rows sorted by length, each only as wide as its own longest row, cut
    where they pad least (:func:`slice_bounds`).

    The batch is the same uniformly drawn set of rows and the result the same
    tensor: a right-padded row's outputs do not depend on how much padding
    follows it (every dynamic-width model is causal, or masks its padding), so
    only the work on padding columns is saved. In a batch of uniformly drawn
    rows most rows are far shorter than its longest, which sets the padded
    width of all of them. Dropout masks are drawn per slice, so in training
    mode the random draws differ from the one-piece forward, not their law.
    Left-padded (fixed-width) batches run in one piece.
    """
    n = len(batch)
    if slices <= 1 or n < 2 or batch.left_padded:
        return model(batch)
    order = torch.argsort(batch.lengths, stable=True)
    sorted_lengths = batch.lengths[order].cpu().numpy()
    width = batch.input.shape[1]
    parts, start = [], 0
    for end in slice_bounds(sorted_lengths, slices):
        rows = order[start:end]
        w = max(int(sorted_lengths[end - 1]), 1)
        sub = Batch(batch.input[rows, :w], batch.target[rows, :w], batch.lengths[rows], batch.source[rows], batch.row[rows])
        parts.append(F.pad(model(sub), (0, 0, 0, width - w)))
        start = end
    return torch.cat(parts)[torch.argsort(order)]  # back to the batch's row order
