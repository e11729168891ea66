"""``TrainConfig.row_filter="loss"``: keep the regenerated rows that a model of
the real data finds plausible, then train on them.

Three steps, each a plain use of the trainer:

1. a *scorer* is trained on the original rows alone, to early stopping, with
   the run's own settings (so it is the original arm of the same seed);
2. every regenerated row is scored by its mean full-softmax cross-entropy over
   its target positions under the scorer (eval mode: no dropout, no sampled
   negatives, so the score is deterministic);
3. the ``row_filter_keep`` share of regenerated rows with the lowest loss is
   kept (ties broken by row order), and the model is trained from scratch on
   the original and pattern rows plus the kept regenerated rows.

It is the hard, model-aware counterpart of DR4SR+'s learned weights (issue 11
lists it as a lever for strong baselines): the personalizer weighs rows by what
they do to the validation loss; this filter drops the rows the real data's
model finds least likely. The scorer's test figures are reported but never used
to choose; its validation figures are not used either (the kept share is a
setting, not tuned per run).

Checkpoints: the scorer writes ``checkpoint_dir/scorer``, the final run
``checkpoint_dir`` as a plain run, so a retried job resumes inside either.

Step 1 *is* the original arm of the same seed, so a comparison that trains
that arm anyway hands its model in as a :class:`Scorer` and step 1 is
skipped (``models.comparison.compare`` in one process, the compare job's
train jobs in the service): the filter then costs nothing beyond its own run.

``row_filter="random"`` is the filter's control: the same share of
regenerated rows, drawn uniformly with the run's seed (no scorer). Against it,
the loss filter's figures tell its ranking apart from simply training on fewer
regenerated rows.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.config import TrainConfig
from models.data.sequences import EvalRows, RowSource, TrainRows
from models.progress import Progress, ProgressEvent
from models.recommenders.base import SequentialRecommender

# logits held at once while scoring: (positions x items) floats
_SCORE_BUDGET = 2**25


@torch.no_grad()
def row_losses(model: SequentialRecommender, rows: TrainRows, device: torch.device | str = "cpu") -> np.ndarray:
    """(len(rows),) each row's mean full-softmax cross-entropy over its target
    positions under ``model`` (eval mode), laid out by the model's own
    transform (SASRec: one example per row; FMLP-Rec: one per prefix)."""
    transform = model.batch_transform()
    examples = transform.examples(rows)
    per_example = max(1, int(examples.input_lengths.max(initial=1)) if transform.dynamic_width else 1)
    step = max(1, min(4096, _SCORE_BUDGET // (per_example * (model.num_items + 1))))
    total = np.zeros(len(rows), dtype=np.float64)
    count = np.zeros(len(rows), dtype=np.float64)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(examples), step):
            index = np.arange(start, min(start + step, len(examples)), dtype=np.int64)
            batch = transform.collate(rows, examples, index).to(device)
            out = model.position_losses(batch, "ce")
            row = batch.row.cpu().numpy()
            np.add.at(total, row, out.loss.sum(1).double().cpu().numpy())
            np.add.at(count, row, out.valid.sum(1).double().cpu().numpy())
    finally:
        model.train(was_training)
    return total / np.maximum(count, 1.0)


def _kept_count(n: int, keep: float) -> int:
    """``ceil(keep * n)``, at least one where there is a row."""
    return 0 if n == 0 else min(n, max(1, int(np.ceil(keep * n - 1e-9))))


def keep_lowest(losses: np.ndarray, keep: float) -> np.ndarray:
    """Sorted indices of the ``ceil(keep * n)`` lowest losses (at least one;
    ties go to the earlier row)."""
    k = _kept_count(len(losses), keep)
    return np.sort(np.argsort(losses, kind="stable")[:k]).astype(np.int64)


def keep_random(n: int, keep: float, seed: int) -> np.ndarray:
    """Sorted indices of ``ceil(keep * n)`` of ``n`` rows drawn uniformly
    without replacement (the loss filter's count, chosen by ``seed``)."""
    rng = np.random.default_rng([seed, 0x5EED])  # its own stream: not the trainer's batching
    return np.sort(rng.choice(n, size=_kept_count(n, keep), replace=False)).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class Scorer:
    """A trained model of the original rows to score with instead of training
    one: the original arm of the same model, settings and seed. ``source``
    says where it came from and lands in the report (``row_filter.scorer``)."""

    model: SequentialRecommender
    source: dict[str, Any]

    @classmethod
    def of(cls, result: Any, **origin: Any) -> Scorer:
        """A finished run (a :class:`models.training.TrainResult`) as the scorer."""
        return cls(result.model, {**origin, "epochs_run": result.epochs_run, "best_epoch": result.best_epoch + 1,
                                  "stopped_early": result.stopped_early, "seconds": result.seconds,
                                  "valid": result.valid_metrics, "test": result.test_metrics})

    @classmethod
    def from_folder(cls, folder: Path, device: torch.device | str, **origin: Any) -> Scorer:
        """A folder written by :func:`models.pipeline.train` (``model.safetensors``,
        ``config.json`` and ``report.json``) as the scorer."""
        from models.recommenders.serialization import load_model

        report = json.loads((Path(folder) / "report.json").read_text())
        return cls(load_model(folder, device), {**origin, **{k: report[k] for k in _SUMMARY if k in report}})


# what a scorer's source repeats of its run (the train report's names)
_SUMMARY = ("epochs_run", "best_epoch", "stopped_early", "seconds", "valid", "test")


def check_scorer(scorer: Scorer, config: TrainConfig, num_items: int) -> None:
    """Refuse a scorer that is not a model of this run's kind, shape and catalogue."""
    from models.recommenders import make_config
    from models.training import TrainingError

    if scorer.model.name != config.model:
        raise TrainingError(f"the loss filter's scorer is a {scorer.model.name} model, the run trains {config.model}")
    if scorer.model.num_items != num_items:
        raise TrainingError(f"the loss filter's scorer knows {scorer.model.num_items} items, the data has {num_items}")
    wanted = make_config(config.model, config.model_config_overrides())
    if scorer.model.config != wanted:
        raise TrainingError(f"the loss filter's scorer was built with {scorer.model.config}, this run builds {wanted}")


def _summary(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {}
    q = np.quantile(values, [0.0, 0.25, 0.5, 0.75, 1.0])
    return {"mean": float(values.mean()), "min": float(q[0]), "q25": float(q[1]), "median": float(q[2]),
            "q75": float(q[3]), "max": float(q[4])}


def train_with_row_filter(
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
    scorer: Scorer | None = None,
):
    """The three steps of the module docstring for ``config.row_filter`` 'loss'
    (with ``scorer``, step 1 is that model, see :class:`Scorer`); for 'random',
    the kept rows are drawn instead (step 3 alone)."""
    from models.evaluation import resolve_device
    from models.training import TrainingError, train_model

    by = config.row_filter
    if by not in ("loss", "random"):
        raise TrainingError(f"train_with_row_filter runs row_filter 'loss' or 'random', not {by!r}")
    # world_size > 1 and finetune are refused by TrainConfig's own validation, DR4SR+ by TrainJobConfig's
    if loss_fn is not None or step_hook is not None:
        raise TrainingError(f"row_filter={by!r} does not combine with a custom loss or step hook (DR4SR+)")
    plain = config.model_copy(update={"row_filter": "none"})
    regenerated = np.flatnonzero(train.source == int(RowSource.REGENERATED))
    if len(regenerated) == 0:
        return train_model(train, valid, test, num_items, plain, progress, checkpoint_dir, resume,
                           model_hook, None, None, model_ctx)
    kept = np.zeros(len(regenerated), dtype=bool)
    report: dict[str, Any] = {"by": by, "keep": config.row_filter_keep, "regenerated_rows": int(len(regenerated))}
    scorer_seconds = 0.0
    if by == "random":
        kept[keep_random(len(regenerated), config.row_filter_keep, config.seed)] = True
    else:
        original = np.flatnonzero(train.source == int(RowSource.ORIGINAL))
        if len(original) == 0:
            raise TrainingError("row_filter='loss' needs original rows to train its scorer on; the rows hold none")

        def scoring(event: ProgressEvent) -> None:  # the scorer's epochs report as their own stage
            progress(dataclasses.replace(event, stage=f"scorer:{event.stage}"))

        device = resolve_device(config.device)
        reused = scorer is not None
        if scorer is None:
            trained = train_model(
                train.take(original), valid, test, num_items, plain, scoring,
                None if checkpoint_dir is None else Path(checkpoint_dir) / "scorer", resume,
                model_hook, None, None, model_ctx,
            )
            scorer = Scorer.of(trained)
            scorer_seconds = scorer.source["seconds"]
        else:
            check_scorer(scorer, config, num_items)
        losses = row_losses(scorer.model.to(device), train.take(regenerated), device)
        kept[keep_lowest(losses, config.row_filter_keep)] = True
        report.update(threshold=float(losses[kept].max()), loss_kept=_summary(losses[kept]),
                      loss_dropped=_summary(losses[~kept]), scorer={"reused": reused, **scorer.source})
    keep_rows = train.source != int(RowSource.REGENERATED)
    keep_rows[regenerated[kept]] = True
    filtered = train.take(np.flatnonzero(keep_rows))
    final = train_model(filtered, valid, test, num_items, plain, progress, checkpoint_dir, resume,
                        model_hook, None, None, model_ctx)
    report.update(kept_rows=int(kept.sum()), training_rows=int(len(filtered)))
    return dataclasses.replace(final, seconds=final.seconds + scorer_seconds, row_filter=report)
