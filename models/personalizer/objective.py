"""DR4SR+ plugged into the shared trainer: the loss, step and model hooks of
:func:`models.training.train_model`, the meta step, and the checkpointed state."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from models.batching import Batch
from models.config import PersonalizerConfig
from models.data.sequences import EvalRows, TrainRows
from models.loss_scale import Denominator
from models.personalizer.errors import PersonalizerConfigError, PersonalizerError
from models.personalizer.hypergradient import double_backward_safe, implicit_hypergradient
from models.personalizer.streams import HeldoutStream, TrainStream
from models.personalizer.weights import Personalizer, _position_weights, weighted_position_loss
from models.recommenders.base import SequentialRecommender
from models.training import (
    flatten_optimizer_state,
    load_optimizer_state,
)


class PersonalizedObjective:
    """Plugs DR4SR+ into :func:`models.training.train_model`.

    * ``attach`` (the model hook) registers the personalizer as the submodule
      ``model.personalizer`` so that it is checkpointed, kept with the best
      weights and restored on resume by the trainer itself. In ``bilevel`` mode
      φ has ``requires_grad=False`` outside the meta step, so the inner Adam never
      sees a gradient for it; in ``end_to_end`` mode the inner Adam trains it.
    * ``__call__`` (the loss hook): unweighted while ``epoch <= warmup_epochs``
      (0-based, as in the reference: weighting starts at epoch warmup_epochs + 1).
    * ``after_step`` (the step hook): a meta step every ``interval`` optimiser
      steps once weighting is active; the counter includes warm-up steps.
    """

    def __init__(
        self,
        config: PersonalizerConfig,
        train: TrainRows,
        batch_size: int,
        seed: int,
        loss: str = "bce",
        dev: EvalRows | None = None,
        bucket_chunk: int = 0,
    ) -> None:
        if config.dev_data == "heldout" and (dev is None or len(dev) == 0):
            raise PersonalizerConfigError("dev_data='heldout' needs non-empty held-out rows (dev=EvalRows)")
        self.config, self.train, self.dev = config, train, dev
        self.batch_size, self.seed, self.loss_name, self.bucket_chunk = batch_size, seed, loss, bucket_chunk
        self.personalizer: Personalizer | None = None
        self.meta_optimizer: torch.optim.Optimizer | None = None
        # φ at the start and after its latest update: the trainer swaps the best
        # epoch's weights back in at the end, these keep the rest of the story
        self.initial_state: dict[str, Tensor] = {}
        self.final_state: dict[str, Tensor] = {}
        self.stats: dict[str, Any] = {"meta_steps": 0}
        self._epoch: int | None = None
        self._device = torch.device("cpu")
        self._w_sum, self._w_count = torch.zeros((), device=self._device), torch.zeros((), device=self._device)
        self._theta: list[Tensor] = []
        self._codes = torch.tensor(config.weighted_codes, dtype=torch.uint8)
        self._train_stream: TrainStream | None = None
        self._dev_stream: TrainStream | HeldoutStream | None = None

    # -- hooks ------------------------------------------------------------
    def attach(self, model: SequentialRecommender) -> None:
        cfg = self.config
        device = self._device = next(model.parameters()).device
        self._w_sum, self._w_count = self._w_sum.to(device), self._w_count.to(device)
        self._theta = [p for p in model.parameters() if p.requires_grad]
        self._codes = torch.tensor(cfg.weighted_codes, dtype=torch.uint8, device=device)
        p = Personalizer(model.hidden_size, cfg.hidden, cfg.tau_init, cfg.tau_min, cfg.learn_tau).to(device)
        self.initial_state = self._snapshot(p)
        self.final_state = self._snapshot(p)
        model.add_module("personalizer", p)
        self.personalizer = p
        if cfg.mode == "bilevel":
            p.requires_grad_(False)
            if cfg.meta_optimizer == "adam":
                self.meta_optimizer = torch.optim.Adam(self._phi(), lr=cfg.meta_lr, weight_decay=cfg.meta_weight_decay)
            else:
                self.meta_optimizer = torch.optim.SGD(
                    self._phi(), lr=cfg.meta_lr, momentum=cfg.meta_momentum, weight_decay=cfg.meta_weight_decay
                )
            transform, bs, seed, chunk = model.batch_transform(), self.batch_size, self.seed, self.bucket_chunk
            self._train_stream = TrainStream(self.train, transform, bs, seed, 1, chunk)
            self._dev_stream = (
                TrainStream(self.train, transform, bs, seed, 2, chunk)
                if cfg.dev_data == "train_batch"
                else HeldoutStream(self.dev, transform, bs, seed, 3, chunk)
            )
        else:
            p.tau.requires_grad_(cfg.learn_tau)

    def weighting(self, epoch: int) -> bool:
        return epoch > self.config.warmup_epochs

    def __call__(
        self, model: SequentialRecommender, batch: Batch, step: int, epoch: int, positions: Denominator = None
    ) -> Tensor:
        if epoch != self._epoch:
            self.end_epoch()
            self._epoch = epoch
        if not self.weighting(epoch):
            return model.training_loss(batch, self.loss_name, positions)
        return self.weighted_loss(model, batch, track=True, positions=positions)

    def end_epoch(self) -> None:
        """Record the mean applied (noisy) weight on personalised positions of the
        epoch that just ended: the trajectory shows drift or collapse, whatever
        epoch early stopping keeps."""
        if self._epoch is not None and float(self._w_count) > 0:
            self.stats.setdefault("epoch_weight_mean", []).append(
                [self._epoch, float(self._w_sum) / float(self._w_count)]
            )
        self._w_sum, self._w_count = torch.zeros((), device=self._device), torch.zeros((), device=self._device)

    def after_step(self, model: SequentialRecommender, batch: Batch, step: int, epoch: int) -> None:
        if self.config.mode == "end_to_end":
            self._personalizer().clamp_tau_()
            if self.weighting(epoch):
                self.final_state = self._snapshot(self._personalizer())
        elif self.weighting(epoch) and step % self.config.interval == 0:
            self.meta_step(model)

    # -- losses -----------------------------------------------------------
    def weighted_loss(
        self, model: SequentialRecommender, batch: Batch, track: bool = False, positions: Denominator = None
    ) -> Tensor:
        pl = model.position_losses(batch, self.loss_name)
        w, personalised = _position_weights(
            self._personalizer(), pl.hidden, pl.valid, batch.source, self._codes,
            self.config.detach_hidden, noise=True, normalize=self.config.normalize,
        )  # (B, T), (B,)
        loss = weighted_position_loss(pl.loss, pl.valid, w, positions)
        if track:
            with torch.no_grad():  # running totals stay on the device: no sync per step
                mask = pl.valid & personalised[:, None]
                self._w_sum += (w * mask).sum()
                self._w_count += mask.sum()
        aux = model.auxiliary_loss(batch)
        return loss if aux is None else loss + aux

    def dev_loss(self, model: SequentialRecommender, batch: Batch) -> Tensor:
        if self.config.dev_data == "train_batch":
            return model.training_loss(batch, self.loss_name)
        pl = model.position_losses(batch, self.loss_name)  # only the held-out slot is valid
        return pl.loss.sum() / pl.valid.sum().clamp(min=1)

    # -- the meta step (spec §7.4) -----------------------------------------
    def meta_step(self, model: SequentialRecommender) -> None:
        assert self._train_stream is not None and self._dev_stream is not None and self.meta_optimizer
        p, cfg = self._personalizer(), self.config
        device = next(model.parameters()).device
        b_dev = self._dev_stream.next().to(device)
        b_tr = self._train_stream.next().to(device)
        phi = self._phi()
        for t in phi:
            t.requires_grad_(True)
        try:
            with double_backward_safe(model, device):
                dev = self.dev_loss(model, b_dev)
                train = self.weighted_loss(model, b_tr)
                hyper = implicit_hypergradient(dev, train, self._theta, phi, cfg.hpo_lr, cfg.neumann_terms)
        finally:
            for t in phi:
                t.requires_grad_(False)
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(h) for h in hyper]))
        if not bool(torch.isfinite(norm)):
            raise PersonalizerError(
                f"non-finite hypergradient at meta step {int(self.stats['meta_steps']) + 1} "
                f"(dev loss {float(dev.detach()):.4g}, weighted train loss {float(train.detach()):.4g})"
            )
        for t, h in zip(phi, hyper, strict=True):
            t.grad = h
        torch.nn.utils.clip_grad_norm_(phi, cfg.max_grad_norm)
        self.meta_optimizer.step()
        self.meta_optimizer.zero_grad(set_to_none=True)
        p.clamp_tau_()
        self.final_state = self._snapshot(p)
        self.stats.update(
            meta_steps=int(self.stats["meta_steps"]) + 1,
            hypergradient_norm=float(norm),
            dev_loss=float(dev.detach()),
            tau=float(p.temperature.detach()),
        )

    # -- checkpointing (the trainer stores this with its own checkpoint) ----
    def state_dict(self) -> dict[str, Any]:
        # the running weight totals of the epoch in progress travel too: the trainer
        # checkpoints before this object sees the next epoch start
        state: dict[str, Any] = {"stats": dict(self.stats), "epoch": self._epoch}
        state.update(w_sum=self._w_sum, w_count=self._w_count)
        state.update({f"initial.{k}": v for k, v in self.initial_state.items()})
        if self.meta_optimizer is not None:
            tensors, meta = flatten_optimizer_state(self.meta_optimizer, prefix="meta_opt.")
            state.update(tensors)
            state["meta_opt"] = meta
            state["streams"] = [self._train_stream.state(), self._dev_stream.state()]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stats = dict(state.get("stats", self.stats))
        self._epoch = state.get("epoch")
        if "w_sum" in state:
            self._w_sum, self._w_count = state["w_sum"].to(self._device), state["w_count"].to(self._device)
        self.initial_state = {k[len("initial.") :]: v for k, v in state.items() if k.startswith("initial.")}
        self.final_state = self._snapshot(self._personalizer())  # the trainer restored φ already
        if self.meta_optimizer is not None and "meta_opt" in state:
            load_optimizer_state(self.meta_optimizer, state, state["meta_opt"], prefix="meta_opt.")
            self._train_stream.restore(state["streams"][0])
            self._dev_stream.restore(state["streams"][1])

    # -- helpers ----------------------------------------------------------
    def _personalizer(self) -> Personalizer:
        if self.personalizer is None:
            raise PersonalizerError("the personalizer is not attached: pass attach as the trainer's model_hook")
        return self.personalizer

    @staticmethod
    def _snapshot(p: Personalizer) -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in p.state_dict().items()}

    def _phi(self) -> list[Tensor]:
        p = self._personalizer()
        return list(p.net.parameters()) + ([p.tau] if self.config.learn_tau else [])
