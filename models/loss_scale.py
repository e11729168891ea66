"""How much a batch's loss weighs (``TrainConfig.loss_scale``).

'batch': the mean over the batch's own target positions, as in the reference.
'row': the mean over the batch's rows of each row's mean over its own target
positions, so every row weighs the same whatever its length (what length
bucketing with 'batch' gives roughly, without bucketing's homogeneous batches:
the check that separates the two). FMLP-Rec's examples have one target each,
so there 'row' is 'batch'.
'epoch': the batch's summed losses over the epoch's mean target positions per
batch, so every position weighs the same whatever the batching; with length
bucketing, a batch of two-item rows then weighs less than a batch of long
rows, as it would inside uniformly shuffled batches. 'auto' picks between
them from the training rows (:func:`resolve_loss_scale`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from torch import Tensor

from models.data.sequences import RowSource, TrainRows

if TYPE_CHECKING:
    from models.batching import BatchIterator
    from models.config import TrainConfig


# The denominator a training loss is reduced with: None = the batch's own
# target positions ('batch'), a number = that many positions ('epoch'), 'row' =
# each row's own positions, then the mean over rows ('row').
Denominator = float | Literal["row"] | None


def summed_row_means(per: Tensor, valid: Tensor) -> Tensor:
    """Σ over rows of each row's mean over its own valid positions (rows
    without a target add 0); 'row' divides it by the rows that have one."""
    return (per.sum(1) / valid.sum(1).clamp(min=1).to(per.dtype)).sum()


def reduce_position_loss(per: Tensor, valid: Tensor, denominator: Denominator = None) -> Tensor:
    """One loss from per-position losses ``per`` (B, T), already zero (or
    weighted) where they should be, and the ``valid`` (B, T) mask."""
    if denominator == "row":
        rows = valid.any(1).sum().clamp(min=1).to(per.dtype)
        return summed_row_means(per, valid) / rows
    if denominator is None:
        return per.sum() / valid.sum().clamp(min=1).to(per.dtype)
    return per.sum() / float(denominator)


def denominator_for(scale: str, batches: BatchIterator) -> Denominator:
    """The denominator of a resolved loss scale over one epoch's batches."""
    if scale == "epoch":
        return mean_positions(batches)
    return "row" if scale == "row" else None


def mean_positions(batches: BatchIterator) -> float:
    """Target positions per batch over the epoch (``loss_scale='epoch'``).
    Every example of both transforms has ``input_lengths`` targets (FMLP's
    prefix examples: their one target each, counted as 1)."""
    ex = batches.examples
    per_example = ex.input_lengths if batches.transform.dynamic_width else np.ones(len(ex))
    return float(per_example.sum()) / max(len(batches), 1)


# ``loss_scale='auto'``: under length bucketing with the per-batch mean, the
# pattern and regenerated rows get about their share of the rows as weight;
# their share of the target positions is what uniform batches give them. On
# Beauty the two differ by 1.9x (and bucketing's extra weight goes with
# DR4SR's lift); on ml-100k, whose original rows are ~48 items long beside
# two-item pattern rows, by 12x, and there the per-batch mean put DR4SR
# below the original while 'epoch' did not (benchmarks/results/quality_notes.md).
OVERWEIGHT_LIMIT = 4.0


def synthetic_overweight(train: TrainRows, transform: Any) -> float:
    """Share of rows over share of target positions of the non-original rows
    (0 when there are none)."""
    synthetic = train.source != int(RowSource.ORIGINAL)
    if not synthetic.any():
        return 0.0
    per_row = np.minimum(train.seqs.lengths, transform.max_len + 1) - 1  # target positions
    position_share = float(per_row[synthetic].sum()) / max(float(per_row.sum()), 1.0)
    return float(synthetic.mean()) / max(position_share, 1e-12)


def resolve_loss_scale(config: TrainConfig, train: TrainRows, transform: Any) -> str:
    """The loss scale a run uses: ``config.loss_scale``, with 'auto' made
    'epoch' when length-bucketed batches would over-weight the synthetic rows
    by more than ``OVERWEIGHT_LIMIT`` (uniform batches never do: 'batch')."""
    if config.loss_scale != "auto":
        return config.loss_scale
    if config.bucket_chunk == 0 or not transform.dynamic_width:
        return "batch"
    return "epoch" if synthetic_overweight(train, transform) > OVERWEIGHT_LIMIT else "batch"
