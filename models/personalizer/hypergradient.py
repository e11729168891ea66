"""The implicit hypergradient of spec §7.4, as pure autograd algebra.

Nothing here knows about models, batches or the trainer: given the dev loss,
the weighted training loss and the two parameter lists θ (target model) and
φ (personalizer), it returns the hypergradient for φ. ``tests/personalizer``
checks it against finite differences and the explicit algebra.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel


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
