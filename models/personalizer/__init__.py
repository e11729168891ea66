"""DR4SR+ — model-aware dataset personalization by bi-level optimisation (spec §7).

A small MLP (the *personalizer* ``g_φ``) reads the target model's query vector
``h`` at every training position and emits a soft weight ``w ∈ (0, 1)``. The
target model θ is trained on the weighted loss; every ``interval`` steps φ
takes one step along the implicit hypergradient of an unweighted "dev" loss,
approximated with a truncated Neumann series of Hessian-vector products
(spec §7.4). All derivatives come from autograd (``create_graph=True``).

Reference behaviour and its fixes are independent flags of
:class:`PersonalizerConfig` (quirks Q3, Q14, Q15, Q16); ``parity()`` gives the
released code, ``fixed()`` flips every flag; ``mode="end_to_end"`` is the
paper's ablation (C).

Entry point: :func:`train_personalized`, the shared trainer with
:class:`PersonalizedObjective` plugged into its loss / step / model hooks.
The meta step draws its two batches from persistent, length-bucketed streams
(no loader per meta step, quirk Q38). Cost figures:
``benchmarks/personalizer_cost.py`` and ``benchmarks/results/``.

Modules, one concern each:

* :mod:`~models.personalizer.weights`: the personalizer ``g_φ``, per-position
  weights, the weighted loss, weight summaries;
* :mod:`~models.personalizer.hypergradient`: the implicit hypergradient (pure autograd);
* :mod:`~models.personalizer.streams`: the meta step's batch streams;
* :mod:`~models.personalizer.objective`: :class:`PersonalizedObjective`, the trainer hooks and the meta step;
* :mod:`~models.personalizer.errors`: its two exceptions;
* this module: the entry point :func:`train_personalized` (it looks up
  ``train_model`` here, so tests can spy on the trainer it drives).

Every setting is a field of :class:`models.config.PersonalizerConfig`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from torch import Tensor

from models.config import PersonalizerConfig
from models.data.sequences import EvalRows, TrainRows
from models.personalizer.errors import PersonalizerConfigError, PersonalizerError
from models.personalizer.hypergradient import double_backward_safe, implicit_hypergradient
from models.personalizer.objective import PersonalizedObjective
from models.personalizer.streams import HeldoutStream, TrainStream, heldout_batch
from models.personalizer.weights import (
    Personalizer,
    collect_weights,
    position_weights,
    summarize_weights,
    weighted_position_loss,
)
from models.progress import Progress, no_progress
from models.training import TrainConfig, TrainResult, train_model

DevData = Literal["train_batch", "heldout"]
Mode = Literal["bilevel", "end_to_end"]


@dataclass
class PersonalizedResult(TrainResult):
    # summarize_weights of the best epoch's model and φ, noise-free, per row source
    weights: dict[str, dict[str, Any]] = field(default_factory=dict)
    personalizer: Personalizer | None = None  # φ (and τ) of the best epoch
    personalizer_config: dict[str, Any] = field(default_factory=dict)
    # meta-step count, last hypergradient norm / dev loss / τ, and epoch_weight_mean:
    # [[epoch, mean applied weight on personalised positions], ...] for weighted epochs
    meta: dict[str, Any] = field(default_factory=dict)
    # {"initial": φ before training, "final": φ after the last epoch} (state dicts)
    personalizer_states: dict[str, dict[str, Tensor]] = field(default_factory=dict)


def split_dev_and_selection(valid: EvalRows, seed: int) -> tuple[EvalRows, EvalRows]:
    """Disjoint (dev, selection) halves of the validation rows, by a seeded
    permutation of the users; each keeps the rows' original order."""
    if len(valid) < 2:
        raise PersonalizerConfigError(
            f"dev_data='heldout' needs at least 2 validation users to split, got {len(valid)}"
        )
    order = np.random.default_rng([seed, 0xDE5]).permutation(len(valid))
    half = len(valid) // 2
    return valid.take(np.sort(order[:half])), valid.take(np.sort(order[half:]))


def train_personalized(
    train: TrainRows,
    valid: EvalRows,
    test: EvalRows,
    num_items: int,
    train_config: TrainConfig | None = None,
    personalizer_config: PersonalizerConfig | None = None,
    progress: Progress = no_progress,
    dev: EvalRows | None = None,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    model_ctx: dict[str, Any] | None = None,
    weight_bins: int = 20,
) -> PersonalizedResult:
    """DR4SR+: train ``train_config.model`` wrapped in the personalizer (spec §7).

    Same loop, early stopping, checkpoints and test run as :func:`train_model`.
    ``dev`` is the held-out split for ``dev_data="heldout"``. When it is not
    given, the validation users are split into two disjoint halves
    (:func:`split_dev_and_selection`): the meta-objective's dev targets come
    from one, early stopping and checkpoint selection from the other, so no
    split is used twice; test targets are never touched by either. The returned model is
    the plain recommender (the personalizer is detached from it, so it saves and
    loads like any other); ``weights`` summarises the learned per-position
    weights on ``train`` per row source.
    """
    train_config = train_config if train_config is not None else TrainConfig()
    cfg = personalizer_config if personalizer_config is not None else PersonalizerConfig.parity()
    unweighted = cfg.nothing_to_weigh(train.counts())
    if unweighted:
        raise PersonalizerConfigError(unweighted)
    if cfg.dev_data == "heldout" and dev is None:
        # no split used twice: the meta-objective never sees the targets that
        # early stopping and checkpoint selection are judged on
        dev, valid = split_dev_and_selection(valid, train_config.seed)
    objective = PersonalizedObjective(
        cfg,
        train,
        train_config.batch_size,
        train_config.seed,
        train_config.loss,
        dev=dev if cfg.dev_data == "heldout" else None,
        bucket_chunk=train_config.bucket_chunk,
    )
    result = train_model(
        train,
        valid,
        test,
        num_items,
        train_config,
        progress,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        model_hook=objective.attach,
        loss_fn=objective,
        step_hook=objective.after_step,
        model_ctx=model_ctx,
    )
    objective.end_epoch()
    model, personalizer = result.model, objective._personalizer()
    w, src = collect_weights(model, personalizer, train, cfg.weighted_codes, train_config.batch_size, cfg.normalize)
    del model.personalizer  # a plain recommender again (checkpoints stay model-only)
    personalizer.requires_grad_(False)
    return PersonalizedResult(
        **{f.name: getattr(result, f.name) for f in dataclasses.fields(TrainResult)},
        weights=summarize_weights(w, src, cfg.weighted_codes, bins=weight_bins),
        personalizer=personalizer.eval(),
        personalizer_config=cfg.as_dict(),
        meta=dict(objective.stats),
        personalizer_states={"initial": objective.initial_state, "final": objective.final_state},
    )


__all__ = [
    "DevData",
    "HeldoutStream",
    "Mode",
    "PersonalizedObjective",
    "PersonalizedResult",
    "Personalizer",
    "PersonalizerConfig",
    "PersonalizerConfigError",
    "PersonalizerError",
    "TrainStream",
    "collect_weights",
    "double_backward_safe",
    "heldout_batch",
    "implicit_hypergradient",
    "position_weights",
    "split_dev_and_selection",
    "summarize_weights",
    "train_personalized",
    "weighted_position_loss",
]
