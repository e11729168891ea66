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
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.batching import AllPositions, Batch, RowTransform

LossName = Literal["bce", "ce"]


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
        h = self(batch)  # (B, T, d)
        valid = batch.target != 0  # (B, T)
        table = self.item_embeddings()  # (N + 1, d)
        if loss == "bce":
            # one gather for positives and negatives: one sparse backward instead of two
            ids = torch.stack([batch.target, self.sample_negatives(batch.target)], -1)  # (B, T, 2)
            scores = (h.unsqueeze(-2) * table[ids]).sum(-1)  # (B, T, 2)
            per = F.softplus(-scores[..., 0]) + F.softplus(scores[..., 1])
        elif loss == "ce":
            # full softmax only over valid positions: (V, N + 1) instead of (B, T, N + 1)
            logits = h[valid] @ table.T  # (V, N + 1)
            logits[:, 0] = float("-inf")
            per = torch.zeros(valid.shape, dtype=h.dtype, device=h.device)
            per[valid] = F.cross_entropy(logits, batch.target[valid], reduction="none")
        else:
            raise ModelConfigError(f"loss must be 'bce' or 'ce', got {loss!r}")
        return PositionLoss(per * valid, valid, h)

    def auxiliary_loss(self, batch: Batch) -> Tensor | None:
        """An extra, already weighted training term (CL4SRec's InfoNCE); None elsewhere."""
        return None

    def training_loss(
        self, batch: Batch, loss: LossName = "bce", positions: float | None = None
    ) -> Tensor:
        """The batch's summed position losses over ``positions`` (the epoch's
        mean target positions per batch, ``TrainConfig.loss_scale='epoch'``),
        or over its own target positions (None: the per-batch mean)."""
        pl = self.position_losses(batch, loss)
        denominator = pl.valid.sum().clamp(min=1) if positions is None else positions
        out = pl.loss.sum() / denominator
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
