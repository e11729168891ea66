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
(no loader per meta step, quirk Q38). Cost: a meta step is ~5x (narrow
batches) to ~10x (width 50) a plain step on CPU, i.e. roughly +25-45 % per
epoch at ``interval=30``; peak memory rises by the second-order graph.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from models.batching import Batch, BatchIterator, RowTransform
from models.data.sequences import EvalRows, RowSource, Sequences, TrainRows
from models.progress import Progress, no_progress
from models.recommenders.base import SequentialRecommender
from models.training import (
    TrainConfig,
    TrainResult,
    flatten_optimizer_state,
    load_optimizer_state,
    train_model,
)

DevData = Literal["train_batch", "heldout"]
Mode = Literal["bilevel", "end_to_end"]
_SOURCES = {s.label: s for s in RowSource}


class PersonalizerConfigError(ValueError):
    """A DR4SR+ setting is out of range or unknown."""


@dataclass(frozen=True)
class PersonalizerConfig:
    # epochs 0..warmup_epochs (0-based) are unweighted, as the reference's `e <= warmup_epoch`:
    # weighting starts at epoch index warmup_epochs + 1
    warmup_epochs: int = 10
    interval: int = 30  # inner steps between meta steps (the counter includes warm-up steps)
    hpo_lr: float = 1e-3  # Neumann step α
    neumann_terms: int = 3  # J
    max_grad_norm: float = 10.0  # clip of the hypergradient (global norm over φ, τ)
    tau_init: float = 10.0
    tau_min: float = 1.0
    meta_lr: float = 1e-3
    meta_momentum: float = 0.9
    meta_weight_decay: float = 1e-3
    hidden: int = 64
    # -- independent behaviour flags (parity value first) ------------------
    dev_data: DevData = "train_batch"  # Q3: "heldout" = validation targets of validation histories
    detach_hidden: bool = False  # Q16: stop-gradient between the sub-model and the personalizer
    learn_tau: bool = False  # Q15: τ receives the hypergradient (floored at tau_min)
    # Q14: sources whose rows are re-weighted; the rest get weight 1.
    weight_sources: frozenset[str] = field(default_factory=lambda: frozenset({"original", "regenerated"}))
    mode: Mode = "bilevel"  # "end_to_end" = ablation (C): φ trained on the weighted training loss

    def __post_init__(self) -> None:
        if isinstance(self.weight_sources, str):
            raise PersonalizerConfigError(
                f"weight_sources must be a collection of source names, got the string {self.weight_sources!r}"
            )
        object.__setattr__(self, "weight_sources", frozenset(self.weight_sources))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "bool" and not isinstance(value, bool):
                raise PersonalizerConfigError(f"{f.name} must be true or false, got {value!r}")
            if f.type == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise PersonalizerConfigError(f"{f.name} must be an int, got {value!r}")
            if f.type == "float" and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise PersonalizerConfigError(f"{f.name} must be a number, got {value!r}")
        unknown = sorted(map(repr, self.weight_sources - _SOURCES.keys()))
        if unknown:
            raise PersonalizerConfigError(
                f"weight_sources: unknown row source(s) {unknown}; expected a subset of {sorted(_SOURCES)}"
            )
        if self.dev_data not in ("train_batch", "heldout"):
            raise PersonalizerConfigError(f"dev_data must be 'train_batch' or 'heldout', got {self.dev_data!r}")
        if self.mode not in ("bilevel", "end_to_end"):
            raise PersonalizerConfigError(f"mode must be 'bilevel' or 'end_to_end', got {self.mode!r}")
        for name in ("warmup_epochs", "neumann_terms"):
            if getattr(self, name) < 0:
                raise PersonalizerConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("interval", "hidden"):
            if getattr(self, name) < 1:
                raise PersonalizerConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("tau_min", "max_grad_norm", "meta_lr"):
            if not getattr(self, name) > 0:
                raise PersonalizerConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.tau_init < self.tau_min:
            raise PersonalizerConfigError(f"tau_init ({self.tau_init}) must be >= tau_min ({self.tau_min})")
        if self.hpo_lr < 0 or self.meta_momentum < 0 or self.meta_weight_decay < 0:
            raise PersonalizerConfigError("hpo_lr, meta_momentum and meta_weight_decay must be >= 0")

    @classmethod
    def parity(cls, **overrides: Any) -> PersonalizerConfig:
        """The released MetaModel: dev = training batches, h not detached, τ frozen at 10,
        every non-pattern row re-weighted."""
        return replace(cls(), **overrides)

    @classmethod
    def fixed(cls, **overrides: Any) -> PersonalizerConfig:
        """Every quirk flag flipped: held-out dev targets, detached h, learnable τ,
        only regenerated rows re-weighted."""
        base = cls(
            dev_data="heldout",
            detach_hidden=True,
            learn_tau=True,
            weight_sources=frozenset({"regenerated"}),
        )
        return replace(base, **overrides)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PersonalizerConfig:
        """``{"profile": "parity" | "fixed", **overrides}`` (e.g. from JSON or an API
        request); unknown keys are an error."""
        data = dict(data)
        profile = data.pop("profile", "parity")
        if profile not in ("parity", "fixed"):
            raise PersonalizerConfigError(f"profile must be 'parity' or 'fixed', got {profile!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PersonalizerConfigError(f"PersonalizerConfig: unknown field(s) {unknown}; known: {sorted(known)}")
        return getattr(cls, profile)(**data)

    @property
    def weighted_codes(self) -> tuple[int, ...]:
        return tuple(sorted(int(_SOURCES[s]) for s in self.weight_sources))

    def as_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["weight_sources"] = sorted(self.weight_sources)
        return out


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


# ---------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------


def position_weights(
    personalizer: Personalizer,
    hidden: Tensor,
    valid: Tensor,
    source: Tensor,
    weighted_codes: Sequence[int] | Tensor,
    detach_hidden: bool,
    noise: bool = True,
) -> Tensor:
    """Per-position weights (B, T): the personalizer's output on rows of a weighted
    source, 1 on other rows, 0 on padding positions.

    hidden (B, T, d), valid (B, T) bool, source (B,) RowSource codes.
    """
    return _position_weights(personalizer, hidden, valid, source, weighted_codes, detach_hidden, noise)[0]


def _position_weights(
    personalizer: Personalizer,
    hidden: Tensor,
    valid: Tensor,
    source: Tensor,
    weighted_codes: Sequence[int] | Tensor,
    detach_hidden: bool,
    noise: bool,
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
    w = torch.where(personalised[:, None], w, torch.ones_like(w))
    return w * valid.to(w.dtype), personalised


def weighted_position_loss(loss: Tensor, valid: Tensor, weights: Tensor) -> Tensor:
    """Σ w·ℓ / #valid (spec §7.2): the denominator is the valid count, not Σw, so
    down-weighting really shrinks the loss (and its gradient)."""
    mask = valid.to(loss.dtype)
    return (weights * loss * mask).sum() / mask.sum().clamp(min=1.0)


# ---------------------------------------------------------------------------
# the implicit hypergradient (spec §7.4)
# ---------------------------------------------------------------------------


def _zeros_for_none(grads: Sequence[Tensor | None], like: Sequence[Tensor]) -> list[Tensor]:
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, like, strict=True)]


def implicit_hypergradient(
    dev_loss: Tensor,
    train_loss: Tensor,
    theta: Sequence[Tensor],
    phi: Sequence[Tensor],
    alpha: float,
    terms: int,
) -> list[Tensor]:
    """``−∇_θL_dev · Σ_{j=0..J} (I − α∇²_θL_train)^j · ∇_φ∇_θL_train`` for every tensor in φ.

    As in the reference, α sits inside the series and the result is not
    multiplied back by α (spec §7.4). ``train_loss`` must have been built with a
    graph through both θ and φ; ``dev_loss`` needs a graph through θ only.
    """
    theta, phi = list(theta), list(phi)
    g_v = torch.autograd.grad(dev_loss, theta, allow_unused=True)
    g_v = [g.detach() for g in _zeros_for_none(g_v, theta)]
    # create_graph: g_t feeds the Hessian-vector products and the mixed derivative
    g_t = torch.autograd.grad(train_loss, theta, create_graph=True, allow_unused=True)
    # a θ tensor the training loss does not touch contributes nothing to any product
    pairs = [(g, i) for i, g in enumerate(g_t) if g is not None and g.requires_grad]
    if not pairs:
        return [torch.zeros_like(p) for p in phi]
    g_t_used = [g for g, _ in pairs]
    theta_used = [theta[i] for _, i in pairs]
    v = [g_v[i] for _, i in pairs]
    p = list(v)
    for _ in range(terms):
        hv = torch.autograd.grad(g_t_used, theta_used, grad_outputs=v, retain_graph=True, allow_unused=True)
        hv = _zeros_for_none(hv, theta_used)
        v = [vi - alpha * hi.detach() for vi, hi in zip(v, hv, strict=True)]
        p = [pi + vi for pi, vi in zip(p, v, strict=True)]
    mixed = torch.autograd.grad(g_t_used, phi, grad_outputs=p, allow_unused=True)
    return [-m.detach() for m in _zeros_for_none(mixed, phi)]


@contextlib.contextmanager
def double_backward_safe(module: nn.Module, device: torch.device) -> Iterator[None]:
    """Kernels without a double backward, for the meta step only: on CUDA, cuDNN RNNs
    (GRU4Rec) and the flash / memory-efficient attention kernels (SASRec, GNN,
    CL4SRec) are swapped for their differentiable-twice fallbacks. CPU runs untouched."""
    if device.type != "cuda":
        yield
        return
    with contextlib.ExitStack() as stack:
        if any(isinstance(m, nn.RNNBase) for m in module.modules()):
            stack.enter_context(torch.backends.cudnn.flags(enabled=False))
        stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
        yield


# ---------------------------------------------------------------------------
# weight summaries (for the report's histogram)
# ---------------------------------------------------------------------------


def summarize_weights(
    weights: np.ndarray, source: np.ndarray, weighted_codes: Sequence[int], bins: int = 20
) -> dict[str, dict[str, Any]]:
    """Per-RowSource histogram over [0, 1] of the applied per-position weights.

    ``weights`` (P,) and ``source`` (P,) are flattened over valid positions.
    Returns ``{label: {edges, counts, mean, std, positions, weighted}}`` for every
    source that has positions (the format ``models.reports`` plots).
    """
    edges = np.linspace(0.0, 1.0, bins + 1)
    out: dict[str, dict[str, Any]] = {}
    for src in RowSource:
        w = weights[source == int(src)]
        if len(w) == 0:
            continue
        counts, _ = np.histogram(np.clip(w, 0.0, 1.0), bins=edges)
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
) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free applied weights of every valid training position (eval mode, no grad).

    Returns ``(weights (P,), source (P,))``. The Gumbel noise is left out: the
    histogram shows what φ learned, not one draw of the noise.
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
    return np.concatenate(weights), np.concatenate(sources)


# ---------------------------------------------------------------------------
# persistent batch streams for the meta step (quirk Q38: no loader per meta step)
# ---------------------------------------------------------------------------


class _Stream:
    """Endless shuffled batches. Pass ``k`` over the data is the batch list of
    ``BatchIterator.batch_indices`` under ``default_rng([seed, tag, k])`` (length
    bucketing included, so meta-step batches pad as little as training batches),
    which makes ``(pass, batch position)`` the whole state."""

    def __init__(self, order: BatchIterator, seed: int, tag: int) -> None:
        if len(order.examples) == 0:
            raise PersonalizerError("a meta-step batch stream needs at least one row")
        self.order, self.seed, self.tag = order, seed, tag
        self.pass_index, self.position = 0, 0
        self._batches: list[np.ndarray] | None = None

    def next_index(self) -> np.ndarray:
        if self._batches is None:
            self.order.generator = np.random.default_rng([self.seed, self.tag, self.pass_index])
            self._batches = self.order.batch_indices()
        index = self._batches[self.position]
        self.position += 1
        if self.position >= len(self._batches):
            self.pass_index, self.position, self._batches = self.pass_index + 1, 0, None
        return index

    def state(self) -> list[int]:
        return [self.pass_index, self.position]

    def restore(self, state: Sequence[int]) -> None:
        self.pass_index, self.position = int(state[0]), int(state[1])
        self._batches = None


class TrainStream(_Stream):
    def __init__(
        self, rows: TrainRows, transform: RowTransform, batch_size: int, seed: int, tag: int, bucket_chunk: int = 0
    ) -> None:
        it = BatchIterator(rows, batch_size, transform=transform, bucket_chunk=bucket_chunk)
        super().__init__(it, seed, tag)

    def next(self) -> Batch:
        return self.order.transform.collate(self.order.rows, self.order.examples, self.next_index())


class HeldoutStream(_Stream):
    """Validation histories with their validation target as the only next-item
    example (the last valid position); test items never enter."""

    def __init__(
        self, rows: EvalRows, transform: RowTransform, batch_size: int, seed: int, tag: int, bucket_chunk: int = 0
    ) -> None:
        self.rows, self.transform = rows, transform
        # stand-in rows with the same input lengths, only to reuse BatchIterator's bucketing
        lengths = np.minimum(rows.history.lengths, transform.max_len) + 1
        shape = TrainRows.build(Sequences.from_lengths(np.ones(int(lengths.sum())), lengths), RowSource.ORIGINAL)
        super().__init__(BatchIterator(shape, batch_size, bucket_chunk=bucket_chunk), seed, tag)

    def next(self) -> Batch:
        return heldout_batch(self.rows, self.next_index(), self.transform)


def heldout_batch(rows: EvalRows, index: np.ndarray, transform: RowTransform) -> Batch:
    batch = transform.collate_eval(rows, np.asarray(index, dtype=np.int64))
    if transform.left_padded:  # single-target layout (FMLP): (B, L) input, (B, 1) target
        return batch
    # all-positions layout: the target sits at the last input slot, every other slot is 0
    target = torch.zeros_like(batch.input)  # (B, T)
    target[torch.arange(len(batch)), batch.lengths - 1] = batch.target[:, 0]
    return Batch(batch.input, target, batch.lengths, batch.source, batch.row)


# ---------------------------------------------------------------------------
# the trainer integration
# ---------------------------------------------------------------------------


class PersonalizerError(RuntimeError):
    """DR4SR+ training cannot continue (e.g. a non-finite hypergradient)."""


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

    def __call__(self, model: SequentialRecommender, batch: Batch, step: int, epoch: int) -> Tensor:
        if epoch != self._epoch:
            self.end_epoch()
            self._epoch = epoch
        if not self.weighting(epoch):
            return model.training_loss(batch, self.loss_name)
        return self.weighted_loss(model, batch, track=True)

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
    def weighted_loss(self, model: SequentialRecommender, batch: Batch, track: bool = False) -> Tensor:
        pl = model.position_losses(batch, self.loss_name)
        w, personalised = _position_weights(
            self._personalizer(), pl.hidden, pl.valid, batch.source, self._codes,
            self.config.detach_hidden, noise=True,
        )  # (B, T), (B,)
        loss = weighted_position_loss(pl.loss, pl.valid, w)
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
    dev_idx, sel_idx = np.sort(order[:half]), np.sort(order[half:])

    def take(index: np.ndarray) -> EvalRows:
        return EvalRows(valid.history.take(index), valid.target[index], valid.user[index])

    return take(dev_idx), take(sel_idx)


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
    if not np.isin(train.source, cfg.weighted_codes).any():
        raise PersonalizerConfigError(
            f"no training row comes from a weighted source {sorted(cfg.weight_sources)} "
            f"(rows per source: {train.counts()}): DR4SR+ would train a plain model at extra cost"
        )
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
    w, src = collect_weights(model, personalizer, train, cfg.weighted_codes, train_config.batch_size)
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
