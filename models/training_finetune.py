"""``TrainConfig.finetune="original"``: train on every row to early stopping,
then go on from the best weights on the original rows alone, with a fresh Adam
and its own early stopping, and keep whichever phase validates better.

It is a schedule of the synthetic rows' share (all of them, then none): the
pattern and regenerated rows shape the representation, the last epochs fit
the distribution the model is tested on. Selection between the phases uses
the validation metric only; each phase's test figures are computed by the
trainer as usual but never used to choose. Rows without a synthetic source
(the original arm) train once: the second phase would repeat the first.

Checkpoints: the first phase writes ``checkpoint_dir`` as a plain run, the
second ``checkpoint_dir/finetune``, so a retried job resumes inside either.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from models.config import TrainConfig
from models.data.sequences import EvalRows, RowSource, TrainRows
from models.progress import Progress, ProgressEvent


def train_then_finetune(
    train: TrainRows,
    valid: EvalRows,
    test: EvalRows,
    num_items: int,
    config: TrainConfig,
    progress: Progress,
    checkpoint_dir: Path | None,
    resume: bool,
    model_hook: Any,
    loss_fn: Any,
    step_hook: Any,
    model_ctx: dict[str, Any] | None,
):
    from models.training import TrainingError, TrainResult, train_model

    # world_size > 1 is refused by TrainConfig's own validation
    if loss_fn is not None or step_hook is not None:
        raise TrainingError("finetune='original' does not combine with a custom loss or step hook (DR4SR+)")
    plain = config.model_copy(update={"finetune": "none", "row_filter": "none"})
    first = train_model(train, valid, test, num_items, plain, progress, checkpoint_dir, resume,
                        model_hook, None, None, model_ctx)
    original = train.source == int(RowSource.ORIGINAL)
    if original.all() or not original.any():
        return first
    state = {k: v.detach().clone() for k, v in first.model.state_dict().items()}

    def start_from_first(model) -> None:
        model.load_state_dict(state)

    offset = first.epochs_run

    def shifted(event: ProgressEvent) -> None:  # phase-2 epochs continue the count
        progress(dataclasses.replace(event, epoch=None if event.epoch is None else event.epoch + offset))

    ctx = {"train": train} if model_ctx is None else model_ctx  # the same model (GNN's graph) in both phases
    second = train_model(
        train.take(np.flatnonzero(original)), valid, test, num_items, plain, shifted,
        None if checkpoint_dir is None else Path(checkpoint_dir) / "finetune", resume,
        start_from_first, None, None, ctx,
    )
    key = config.monitor
    keep_second = second.valid_metrics[key] >= first.valid_metrics[key]  # ties: the later epoch, as the trainer
    chosen = second if keep_second else first
    history = list(first.history) + [{**h, "epoch": h["epoch"] + offset, "phase": "finetune"} for h in second.history]
    return TrainResult(
        model=chosen.model,
        best_epoch=second.best_epoch + offset if keep_second else first.best_epoch,
        valid_metrics=chosen.valid_metrics,
        test_metrics=chosen.test_metrics,
        test_per_user=chosen.test_per_user,
        history=history,
        seconds=first.seconds + second.seconds,
        epochs_run=first.epochs_run + second.epochs_run,
        stopped_early=second.stopped_early,
        loss_scale=first.loss_scale,
        finetune={
            "kept": "finetune" if keep_second else "all_rows",
            "all_rows": {"epochs_run": first.epochs_run, "best_epoch": first.best_epoch + 1,
                         "valid": first.valid_metrics, "stopped_early": first.stopped_early},
            "finetune": {"epochs_run": second.epochs_run, "best_epoch": second.best_epoch + 1,
                         "valid": second.valid_metrics, "rows": int(original.sum()),
                         "stopped_early": second.stopped_early},
        },
    )

