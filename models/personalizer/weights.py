"""The personalizer ``g_φ`` and the per-position weights it gives the target
model's training loss (spec §7.1-7.2), plus the noise-free weight summaries
the report plots."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from models.batching import BatchIterator
from models.data.sequences import RowSource, TrainRows
from models.loss_scale import Denominator, reduce_position_loss


class Personalizer(nn.Module):
    """``g_φ``: Linear(d→hidden) → ReLU → Linear(hidden→2); weight = soft Gumbel-softmax slot 0."""

    def __init__(
        self,
        dim: int,
        hidden: int = 64,
        tau_init: float = 10.0,
        tau_min: float = 1.0,
        learn_tau: bool = False,
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 2))
        for layer in (self.net[0], self.net[2]):
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)
        # Parity registers τ as a parameter that never gets a gradient (Q15); keeping it a
        # parameter either way makes checkpoints of both profiles interchangeable.
        self.tau = nn.Parameter(torch.tensor(float(tau_init)), requires_grad=learn_tau)
        self.tau_min = float(tau_min)

    @property
    def temperature(self) -> Tensor:
        return self.tau.clamp(min=self.tau_min)

    def forward(self, hidden: Tensor, noise: bool = True) -> Tensor:
        """hidden (..., d) → weight (...,) in (0, 1)."""
        logits = self.net(hidden)  # (..., 2)
        if noise:
            # standard Gumbel noise, the same construction as torch's gumbel_softmax
            logits = logits - torch.empty_like(logits).exponential_().log()
        # slot 0 of a two-way softmax, written as the equivalent (cheaper) sigmoid
        return torch.sigmoid((logits[..., 0] - logits[..., 1]) / self.temperature)

    def clamp_tau_(self) -> None:
        """Keep the raw τ at or above its floor so a learnt τ can still move back up."""
        with torch.no_grad():
            self.tau.clamp_(min=self.tau_min)


# -- weighted losses --------------------------------------------------------------


def position_weights(
    personalizer: Personalizer,
    hidden: Tensor,
    valid: Tensor,
    source: Tensor,
    weighted_codes: Sequence[int] | Tensor,
    detach_hidden: bool,
    noise: bool = True,
    normalize: bool = False,
) -> Tensor:
    """Per-position weights (B, T): the personalizer's output on rows of a weighted
    source, 1 on other rows, 0 on padding positions. With ``normalize`` the
    personalised positions' weights are divided by their mean over the batch
    (the division is part of the graph, so φ's gradient has no component that
    scales every weight alike).

    hidden (B, T, d), valid (B, T) bool, source (B,) RowSource codes.
    """
    return _position_weights(personalizer, hidden, valid, source, weighted_codes, detach_hidden, noise, normalize)[0]


def _position_weights(
    personalizer: Personalizer,
    hidden: Tensor,
    valid: Tensor,
    source: Tensor,
    weighted_codes: Sequence[int] | Tensor,
    detach_hidden: bool,
    noise: bool,
    normalize: bool = False,
) -> tuple[Tensor, Tensor]:
    """(weights (B, T), personalised rows (B,) bool)."""
    if hidden.dim() != 3 or valid.shape != hidden.shape[:2] or source.shape != hidden.shape[:1]:
        raise ValueError(
            f"shape mismatch: hidden {tuple(hidden.shape)}, valid {tuple(valid.shape)}, "
            f"source {tuple(source.shape)}; expected (B, T, d), (B, T), (B,)"
        )
    h = hidden.detach() if detach_hidden else hidden
    w = personalizer(h, noise=noise)  # (B, T)
    if not isinstance(weighted_codes, Tensor):
        weighted_codes = torch.as_tensor(list(weighted_codes), dtype=source.dtype, device=source.device)
    personalised = torch.isin(source, weighted_codes)  # (B,)
    w = torch.where(personalised[:, None], w, torch.ones_like(w)) * valid.to(w.dtype)
    if normalize:
        mask = valid & personalised[:, None]
        mean = (w * mask).sum() / mask.sum().clamp(min=1)
        w = torch.where(mask, w / mean.clamp(min=torch.finfo(w.dtype).tiny), w)
    return w, personalised


def weighted_position_loss(
    loss: Tensor, valid: Tensor, weights: Tensor, positions: Denominator = None
) -> Tensor:
    """Σ w·ℓ / #valid (spec §7.2): the denominator is the valid count, not Σw, so
    down-weighting really shrinks the loss (and its gradient). With
    ``positions`` a number (``loss_scale="epoch"``) the denominator is that
    fixed count; with 'row' (``loss_scale="row"``) each row's Σ w·ℓ is over its
    own valid count and the rows are averaged."""
    return reduce_position_loss(weights * loss * valid.to(loss.dtype), valid, positions)


# -- weight summaries (for the report's histogram) --------------------------------


def summarize_weights(
    weights: np.ndarray, source: np.ndarray, weighted_codes: Sequence[int], bins: int = 20
) -> dict[str, dict[str, Any]]:
    """Per-RowSource histogram over [0, 1] of the applied per-position weights.

    ``weights`` (P,) and ``source`` (P,) are flattened over valid positions.
    Returns ``{label: {edges, counts, mean, std, positions, weighted}}`` for every
    source that has positions (the format ``models.reports`` plots). The bins
    span [0, 1], or [0, max weight] when normalised weights exceed 1.
    """
    top = max(1.0, float(weights.max())) if len(weights) else 1.0
    edges = np.linspace(0.0, top, bins + 1)
    out: dict[str, dict[str, Any]] = {}
    for src in RowSource:
        w = weights[source == int(src)]
        if len(w) == 0:
            continue
        counts, _ = np.histogram(np.clip(w, 0.0, top), bins=edges)
        out[src.label] = {
            "edges": edges.tolist(),
            "counts": counts.astype(int).tolist(),
            "mean": float(w.mean()),
            "std": float(w.std()),
            "min": float(w.min()),
            "max": float(w.max()),
            "positions": int(len(w)),
            "weighted": int(src) in set(weighted_codes),
        }
    return out


def collect_weights(
    model: nn.Module,
    personalizer: Personalizer,
    rows: TrainRows,
    weighted_codes: Sequence[int],
    batch_size: int = 256,
    normalize: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free applied weights of every valid training position (eval mode, no grad).

    Returns ``(weights (P,), source (P,))``. The Gumbel noise is left out: the
    histogram shows what φ learned, not one draw of the noise. With
    ``normalize`` the personalised positions' weights are divided by their mean
    over all of ``rows`` (training divides by each batch's mean).
    """
    device = next(model.parameters()).device
    transform = model.batch_transform()
    was_training = model.training
    model.eval()
    weights, sources = [], []
    try:
        with torch.no_grad():
            # one global length sort (a single bucket): every batch is as narrow as it can be
            batches = BatchIterator(
                rows, batch_size, shuffle=False, transform=transform, bucket_chunk=len(rows) // batch_size + 1
            )
            for batch in batches:
                b = batch.to(device)
                hidden = model(b)  # (B, T, d)
                w = position_weights(personalizer, hidden, b.valid, b.source, weighted_codes, True, noise=False)
                weights.append(w[b.valid].float().cpu().numpy())
                sources.append(b.source[:, None].expand_as(b.valid)[b.valid].cpu().numpy())
    finally:
        model.train(was_training)
    if not weights:
        return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.uint8)
    w, src = np.concatenate(weights), np.concatenate(sources)
    if normalize:
        personalised = np.isin(src, list(weighted_codes))
        if personalised.any():
            w[personalised] /= max(float(w[personalised].mean()), np.finfo(np.float32).tiny)
    return w, src
