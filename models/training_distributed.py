"""The trainer with ``world_size > 1``: data-parallel ranks over
:mod:`models.distributed` (rank 0 validates, checkpoints and tests) and the
per-rank shard loss that DDP averages into the global batch's mean."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from models.batching import Batch
from models.config import TrainConfig
from models.data.sequences import EvalRows, TrainRows
from models.loss_scale import Denominator, summed_row_means
from models.progress import Progress
from models.recommenders import build_model
from models.recommenders.base import SequentialRecommender

if TYPE_CHECKING:
    from models.training import LossFn, ModelHook, StepHook, TrainResult


def _train_distributed(
    train: TrainRows,
    valid: EvalRows,
    test: EvalRows,
    num_items: int,
    config: TrainConfig,
    progress: Progress,
    checkpoint_dir: Path | None,
    resume: bool,
    model_hook: ModelHook | None,
    loss_fn: LossFn | None,
    step_hook: StepHook | None,
    model_ctx: dict[str, Any] | None,
    device: torch.device,
) -> TrainResult:
    """``config.world_size`` data-parallel ranks (models/distributed.py); rank 0
    validates, checkpoints and tests, and its best weights come back here."""
    from models.distributed import from_numpy_state, launch
    from models.training import TrainingError, TrainResult

    if loss_fn is not None or step_hook is not None or model_hook is not None:
        # DR4SR+ (the personalizer's loss, meta-step and attach hooks) runs in one process
        raise TrainingError(
            "world_size > 1 trains plain target models; DR4SR+ hooks need world_size=1"
        )
    try:
        out = launch(
            _train_rank,
            config.world_size,
            (train, valid, test, num_items, config, checkpoint_dir, resume, model_ctx),
            progress,
            device,
            config.num_threads,
        )
    except ValueError as exc:  # world_size larger than the visible GPUs
        raise TrainingError(str(exc)) from exc
    ctx = {"train": train} if model_ctx is None else dict(model_ctx)
    model = build_model(config.model, num_items, config.model_config_overrides(), **ctx)
    model.load_state_dict(from_numpy_state(out.pop("state")), strict=True)
    return TrainResult(model=model.to(device).eval(), **out)


def _train_rank(
    dist_ctx: Any,
    progress: Progress,
    train: TrainRows,
    valid: EvalRows,
    test: EvalRows,
    num_items: int,
    config: TrainConfig,
    checkpoint_dir: Path | None,
    resume: bool,
    model_ctx: dict[str, Any] | None,
) -> dict[str, Any] | None:
    """One rank of :func:`_train_distributed` (runs in a spawned process)."""
    from models.distributed import to_numpy_state
    from models.training import _train

    result = _train(
        train, valid, test, num_items, config, progress, checkpoint_dir, resume,
        None, None, None, model_ctx, dist_ctx.device, dist_ctx,
    )
    if result is None:
        return None
    out = {f.name: getattr(result, f.name) for f in dataclasses.fields(result) if f.name != "model"}
    out["state"] = to_numpy_state(result.model.state_dict())
    return out


class _ShardLoss(torch.nn.Module):
    """DDP's view of a model: the forward is the training loss of one rank's
    shard, scaled so that DDP's gradient average is the global batch's mean."""

    def __init__(self, model: SequentialRecommender) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, batch: Batch | None, loss: str, token_scale: float, row_scale: float, per_row: bool = False
    ) -> Tensor:
        from models.distributed import zero_loss

        if batch is None:
            return zero_loss(self.model)
        pl = self.model.position_losses(batch, loss)
        # per_row: each row's mean over its own targets, token_scale then per target row
        out = (summed_row_means(pl.loss, pl.valid) if per_row else pl.loss.sum()) * token_scale
        aux = self.model.auxiliary_loss(batch)  # a mean over the shard's rows
        return out if aux is None else out + aux * row_scale


def _shard_loss(
    net: torch.nn.Module, batch: Batch | None, loss: str, dist_ctx: Any, positions: Denominator = None
) -> tuple[Tensor, float]:
    """(this rank's loss to back-propagate, the global batch's loss). The
    global batch's summed position losses are divided by its own target
    count, or by ``positions`` (``loss_scale='epoch'``); with 'row'
    (``loss_scale='row'``) the rows' own means are averaged over the global
    batch's rows that have a target."""
    world = dist_ctx.world_size
    per_row = positions == "row"
    # target count: the positions ('batch', 'epoch') or the rows with a target ('row')
    tokens = 0.0
    if batch is not None:
        tokens = float((batch.valid.any(1) if per_row else batch.valid).sum())
    rows = float(len(batch)) if batch is not None else 0.0
    total_tokens, total_rows = (float(x) for x in dist_ctx.all_sum([tokens, rows]))
    denominator = float(positions) if positions is not None and not per_row else total_tokens
    out = net(batch, loss, world / max(denominator, 1.0), world * rows / max(total_rows, 1.0), per_row)
    value = float(dist_ctx.all_sum([float(out.detach())])[0]) / world
    return out, value
