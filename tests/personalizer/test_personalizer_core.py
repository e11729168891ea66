"""Unit tests of the DR4SR+ building blocks on tiny stand-in tensors (no recommender needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from models.config import PersonalizerOptions
from models.data.sequences import RowSource
from models.personalizer import (
    Personalizer,
    PersonalizerConfig,
    implicit_hypergradient,
    position_weights,
    summarize_weights,
    weighted_position_loss,
)

# ---------------------------------------------------------------------------
# config profiles and flags
# ---------------------------------------------------------------------------


def test_parity_profile_matches_the_released_code():
    cfg = PersonalizerConfig.parity()
    assert cfg.dev_data == "train_batch"
    assert cfg.detach_hidden is False
    assert cfg.learn_tau is False
    assert cfg.weight_sources == {"original", "regenerated"}
    assert cfg.mode == "bilevel"
    assert (cfg.warmup_epochs, cfg.interval, cfg.hpo_lr, cfg.neumann_terms) == (10, 30, 1e-3, 3)
    assert (cfg.tau_init, cfg.tau_min, cfg.max_grad_norm, cfg.hidden) == (10.0, 1.0, 10.0, 64)
    assert (cfg.meta_lr, cfg.meta_momentum, cfg.meta_weight_decay) == (1e-3, 0.9, 1e-3)
    assert cfg.weighted_codes == (int(RowSource.ORIGINAL), int(RowSource.REGENERATED))


def test_fixed_profile_flips_every_flag():
    par, fix = PersonalizerConfig.parity(), PersonalizerConfig.fixed()
    for name in ("dev_data", "detach_hidden", "learn_tau", "weight_sources"):
        assert getattr(par, name) != getattr(fix, name), name
    assert fix.weight_sources == {"regenerated"}
    assert fix.mode == "bilevel"
    # beyond the quirks: a step that does not scale with the hypergradient's
    # norm, and weights that can only move between rows
    assert (par.meta_optimizer, par.normalize) == ("sgd", False)
    assert (fix.meta_optimizer, fix.normalize) == ("adam", True)


@pytest.mark.parametrize(
    "flag,value",
    [
        ("dev_data", "heldout"),
        ("detach_hidden", True),
        ("learn_tau", True),
        ("weight_sources", frozenset({"regenerated"})),
        ("mode", "end_to_end"),
    ],
)
def test_flags_are_independent(flag, value):
    base = PersonalizerConfig.parity()
    cfg = PersonalizerConfig.parity(**{flag: value})
    changed = [name for name in type(cfg).model_fields if getattr(cfg, name) != getattr(base, name)]
    assert changed == [flag]


def test_bad_config_raises_validation_errors_naming_the_field():
    with pytest.raises(ValidationError, match="weight_sources"):
        PersonalizerConfig(weight_sources=frozenset({"synthetic"}))
    with pytest.raises(ValidationError, match="dev_data"):
        PersonalizerConfig(dev_data="test")
    with pytest.raises(ValidationError, match="mode"):
        PersonalizerConfig(mode="joint")
    with pytest.raises(ValidationError, match="interval"):
        PersonalizerConfig(interval=0)
    with pytest.raises(ValidationError, match="tau_init"):
        PersonalizerConfig(tau_init=0.5, tau_min=1.0)


def test_config_types_are_checked():
    with pytest.raises(ValidationError, match="detach_hidden"):
        PersonalizerConfig(detach_hidden="yes")
    with pytest.raises(ValidationError, match="interval"):
        PersonalizerConfig(interval=2.5)
    with pytest.raises(ValidationError, match="hpo_lr"):
        PersonalizerConfig(hpo_lr="fast")
    with pytest.raises(ValidationError, match="the string"):
        PersonalizerConfig(weight_sources="regenerated")
    with pytest.raises(ValidationError, match="'original', 'pattern' or 'regenerated'"):
        PersonalizerConfig(weight_sources={1, "original"})


def test_options_pick_a_profile_and_override_it():
    assert PersonalizerOptions().build() == PersonalizerConfig.fixed()  # the default follows the quality grid
    assert PersonalizerOptions(profile="parity").build() == PersonalizerConfig.parity()
    cfg = PersonalizerOptions.model_validate({"profile": "fixed", "interval": 5, "weight_sources": ["original"]}).build()
    assert cfg == PersonalizerConfig.fixed(interval=5, weight_sources=frozenset({"original"}))
    assert cfg.as_dict()["weight_sources"] == ["original"]
    assert PersonalizerOptions.model_validate(cfg.as_dict() | {"profile": "parity"}).build() == cfg
    with pytest.raises(ValidationError, match="warmup"):
        PersonalizerOptions.model_validate({"warmup": 3})
    with pytest.raises(ValidationError, match="profile"):
        PersonalizerOptions.model_validate({"profile": "paper"})
    with pytest.raises(ValidationError, match="tau_init"):
        PersonalizerOptions.model_validate({"tau_init": 0.5})


def test_weight_sources_accepts_any_iterable():
    cfg = PersonalizerConfig(weight_sources={"pattern"})
    assert isinstance(cfg.weight_sources, frozenset)
    assert cfg.weighted_codes == (int(RowSource.PATTERN),)


# ---------------------------------------------------------------------------
# the personalizer and the weighted loss
# ---------------------------------------------------------------------------


def test_personalizer_init_and_weights_near_half_at_tau_10():
    torch.manual_seed(0)
    p = Personalizer(dim=16)
    assert torch.all(p.net[0].bias == 0) and torch.all(p.net[2].bias == 0)
    assert abs(float(p.net[0].weight.detach().std()) - 0.02) < 0.006
    assert not p.tau.requires_grad
    h = torch.randn(8, 5, 16)
    w = p(h)
    assert w.shape == (8, 5)
    assert torch.all((w > 0.3) & (w < 0.7))  # Gumbel noise / 10 barely moves 0.5
    w_clean = p(h, noise=False)
    assert torch.allclose(w_clean, torch.full_like(w_clean, 0.5), atol=0.01)


def test_tau_floor_and_learnable_tau():
    p = Personalizer(dim=4, tau_init=10.0, tau_min=1.0, learn_tau=True)
    assert p.tau.requires_grad
    with torch.no_grad():
        p.tau.fill_(0.2)
    assert float(p.temperature.detach()) == 1.0
    p.clamp_tau_()
    assert float(p.tau.detach()) == 1.0


def test_position_weights_masks_padding_and_unweighted_sources():
    torch.manual_seed(0)
    p = Personalizer(dim=8)
    hidden = torch.randn(3, 4, 8, requires_grad=True)
    valid = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    source = torch.tensor([RowSource.ORIGINAL, RowSource.PATTERN, RowSource.REGENERATED])
    w = position_weights(p, hidden, valid, source, (0, 2), detach_hidden=False)
    assert torch.all(w[~valid] == 0)
    assert torch.all(w[1] == 1.0)  # pattern rows are not personalised in parity
    assert torch.all((w[0, :2] > 0) & (w[0, :2] < 1))
    w.sum().backward()
    assert hidden.grad is not None and hidden.grad.abs().sum() > 0
    hidden.grad = None
    w = position_weights(p, hidden, valid, source, (0, 2), detach_hidden=True)
    w.sum().backward()  # still differentiable w.r.t. φ ...
    assert p.net[2].weight.grad is not None
    assert hidden.grad is None  # ... but Q16 fixed: no gradient from w into the sub-model


def test_position_weights_rejects_bad_shapes():
    p = Personalizer(dim=8)
    with pytest.raises(ValueError, match="shape mismatch"):
        position_weights(p, torch.zeros(2, 3, 8), torch.ones(2, 4, dtype=torch.bool), torch.zeros(2), (0,), False)


def test_weighted_loss_uses_valid_count_as_denominator():
    loss = torch.tensor([[2.0, 4.0, 9.0], [6.0, 9.0, 9.0]])
    valid = torch.tensor([[True, True, False], [True, False, False]])
    w = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    # (0.5*2 + 0.5*4 + 1*6) / 3 valid positions, not / Σw = 2
    assert float(weighted_position_loss(loss, valid, w)) == pytest.approx(3.0)
    ones = torch.ones_like(loss)
    assert float(weighted_position_loss(loss, valid, ones)) == pytest.approx(4.0)


def test_summarize_weights_histograms_per_source():
    w = np.array([0.05, 0.5, 0.52, 1.0, 1.0])
    src = np.array([0, 0, 0, 1, 1])
    out = summarize_weights(w, src, (0,), bins=20)
    assert set(out) == {"original", "pattern"}
    assert out["original"]["counts"][1] == 1 and out["original"]["counts"][10] == 2
    assert sum(out["original"]["counts"]) == 3 and len(out["original"]["edges"]) == 21
    assert out["pattern"]["counts"][-1] == 2  # weight 1 lands in the last (closed) bin
    assert out["original"]["weighted"] and not out["pattern"]["weighted"]
    assert out["original"]["mean"] == pytest.approx(np.mean([0.05, 0.5, 0.52]))


# ---------------------------------------------------------------------------
# the hypergradient against an explicit matrix computation and finite differences
# ---------------------------------------------------------------------------


def _tiny_problem(detach: bool):
    """θ = W (d×k), φ = (A (k×2), τ). Scores s = (xW)·y; per-sample BCE ℓ; weight
    w = softmax((xW)A / τ)[0] (no noise) so the whole problem is deterministic."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 4, generator=g, dtype=torch.float64)
    y = torch.randn(6, 3, generator=g, dtype=torch.float64)
    x_dev = torch.randn(5, 4, generator=g, dtype=torch.float64)
    y_dev = torch.randn(5, 3, generator=g, dtype=torch.float64)
    W0 = torch.randn(4, 3, generator=g, dtype=torch.float64) * 0.5
    A0 = torch.randn(3, 2, generator=g, dtype=torch.float64)
    tau0 = torch.tensor(2.0, dtype=torch.float64)

    def train_loss(W, A, tau):
        h = x @ W
        hw = h.detach() if detach else h
        w = torch.softmax(hw @ A / tau, dim=-1)[:, 0]
        ell = F.softplus(-(h * y).sum(-1))
        return (w * ell).sum() / len(x)

    def dev_loss(W):
        return F.softplus(-((x_dev @ W) * y_dev).sum(-1)).mean()

    return W0, A0, tau0, train_loss, dev_loss


@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize("terms", [0, 1, 3])
def test_hypergradient_matches_explicit_neumann_series(detach, terms):
    W0, A0, tau0, train_loss, dev_loss = _tiny_problem(detach)
    alpha = 0.3  # large so that every Neumann term matters
    W = W0.clone().requires_grad_(True)
    A = A0.clone().requires_grad_(True)
    tau = tau0.clone().requires_grad_(True)
    got = implicit_hypergradient(dev_loss(W), train_loss(W, A, tau), [W], [A, tau], alpha, terms)

    # explicit: H = ∇²_θ L_train (12×12), M = ∂(∇_θ L_train)/∂φ (12×7)
    n_w = W0.numel()

    def flat_train(wflat, phiflat):
        return train_loss(wflat.view_as(W0), phiflat[:-1].view_as(A0), phiflat[-1])

    phi0 = torch.cat([A0.flatten(), tau0.view(1)])
    H = torch.autograd.functional.hessian(lambda w: flat_train(w, phi0), W0.flatten())
    M = torch.autograd.functional.jacobian(
        lambda ph: torch.autograd.functional.jacobian(
            lambda w: flat_train(w, ph), W0.flatten(), create_graph=True
        ),
        phi0,
    )
    g_v = torch.autograd.functional.jacobian(lambda w: dev_loss(w.view_as(W0)), W0.flatten())
    series = sum(torch.linalg.matrix_power(torch.eye(n_w, dtype=H.dtype) - alpha * H, j) for j in range(terms + 1))
    expected = -(g_v @ series @ M)
    got_flat = torch.cat([got[0].flatten(), got[1].view(1)])
    assert torch.allclose(got_flat, expected, rtol=1e-8, atol=1e-10)
    assert expected.abs().max() > 1e-4  # the check is not vacuous


def test_mixed_derivative_matches_finite_differences():
    W0, A0, tau0, train_loss, dev_loss = _tiny_problem(detach=False)
    W = W0.clone().requires_grad_(True)
    A = A0.clone().requires_grad_(True)
    tau = tau0.clone().requires_grad_(True)
    got = implicit_hypergradient(dev_loss(W), train_loss(W, A, tau), [W], [A, tau], 0.0, 0)
    # with α = 0 the series is I: hyper = −∂/∂φ (∇_θL_train(φ) · ∇_θL_dev)
    p = torch.autograd.grad(dev_loss(W), W)[0]

    def inner(A_, tau_):
        Wl = W0.clone().requires_grad_(True)
        g = torch.autograd.grad(train_loss(Wl, A_, tau_), Wl)[0]
        return float((g * p).sum())

    eps = 1e-6
    fd = torch.zeros_like(A0)
    for idx in np.ndindex(*A0.shape):
        Ap, Am = A0.clone(), A0.clone()
        Ap[idx] += eps
        Am[idx] -= eps
        fd[idx] = -(inner(Ap, tau0) - inner(Am, tau0)) / (2 * eps)
    fd_tau = -(inner(A0, tau0 + eps) - inner(A0, tau0 - eps)) / (2 * eps)
    assert torch.allclose(got[0], fd, rtol=1e-5, atol=1e-8)
    assert float(got[1]) == pytest.approx(fd_tau, rel=1e-5, abs=1e-8)


def test_hypergradient_handles_unused_parameters():
    W0, A0, tau0, train_loss, dev_loss = _tiny_problem(detach=True)
    W = W0.clone().requires_grad_(True)
    unused = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    A = A0.clone().requires_grad_(True)
    phi_unused = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    got = implicit_hypergradient(dev_loss(W), train_loss(W, A, tau0), [W, unused], [A, phi_unused], 1e-3, 3)
    assert got[0].abs().sum() > 0
    assert torch.all(got[1] == 0)


def test_normalized_weights_average_one_and_only_move_weight_between_rows():
    torch.manual_seed(0)
    p = Personalizer(dim=8, tau_init=1.0)
    with torch.no_grad():
        p.net[2].weight.normal_(std=1.0)  # weights that differ from row to row
    hidden = torch.randn(3, 4, 8)
    valid = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.bool)
    source = torch.tensor([RowSource.REGENERATED, RowSource.PATTERN, RowSource.REGENERATED])
    codes = (int(RowSource.REGENERATED),)
    p.requires_grad_(False)
    raw = position_weights(p, hidden, valid, source, codes, True, noise=False)
    w = position_weights(p, hidden, valid, source, codes, True, noise=False, normalize=True)
    mask = valid & torch.isin(source, torch.tensor(codes, dtype=source.dtype))[:, None]
    assert float(w[mask].mean()) == pytest.approx(1.0, abs=1e-6)
    assert torch.all(w[~valid] == 0) and torch.all(w[1] == 1.0)  # padding and pattern rows untouched
    assert torch.allclose(w[mask], raw[mask] / raw[mask].mean())  # same ratios between rows
    assert float(w[mask].std()) > 0.05
    # a personalizer that scales every weight alike changes nothing after normalisation ...
    with torch.no_grad():
        p.net[2].weight.zero_()
        p.net[2].bias.copy_(torch.tensor([2.0, -1.0]))
    flat = position_weights(p, hidden, valid, source, codes, True, noise=False, normalize=True)
    assert torch.allclose(flat[valid], torch.ones_like(flat[valid]))
    # ... so the weighted loss is the unweighted one, and its gradient along that bias is 0
    loss = torch.rand(3, 4)
    p.net[2].bias.requires_grad_(True)
    out = weighted_position_loss(loss, valid, position_weights(p, hidden, valid, source, codes, True, False, True))
    assert float(out.detach()) == pytest.approx(float(loss[valid].mean()), rel=1e-6)
    (g,) = torch.autograd.grad(out, [p.net[2].bias])
    assert torch.allclose(g, torch.zeros_like(g), atol=1e-6)


def test_summarize_weights_widens_the_bins_for_normalised_weights():
    out = summarize_weights(np.array([0.2, 1.0, 1.8]), np.array([2, 2, 2]), (2,), bins=9)
    assert out["regenerated"]["edges"][-1] == pytest.approx(1.8)
    assert sum(out["regenerated"]["counts"]) == 3 and out["regenerated"]["counts"][-1] == 1
