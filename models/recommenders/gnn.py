"""GNN: a LightGCN-style item-transition graph feeding the SASRec encoder (spec §6.2).

Not SR-GNN. One global item graph is built from training inputs: ``a_t -> a_{t+k}``
gets weight ``1/k`` for ``k = 1..window`` (duplicates summed), then
``A <- A + Aᵀ + I``. The propagated table ``Ẽ = mean(E, ÂE, Â²E, …, Â^L E)``
is recomputed at every training forward (sparse matmuls) and embeds the input
sequence; scoring uses the raw ``E``; the rest is SASRec.

Normalisation ``"reference"`` is the spec's ``Â = D⁻¹A + AD⁻¹`` with ``d`` the
non-zero count of a row while ``A`` holds summed weights (quirk Q27: entries may
exceed 1); ``"symmetric"`` is the usual ``D_w^{-1/2} A D_w^{-1/2}`` with
weighted degrees, a contractive alternative.

``graph="old"`` builds from the original rows only (deduplicated per user, so a
training file that repeats the original rows does not double their weights);
``graph="new"`` from every row of the current training file. The graph is
stored in buffers, so a saved model reloads without its training data.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from models.data.sequences import RowSource, Sequences, TrainRows
from models.recommenders.base import ModelConfigError
from models.recommenders.sasrec import SASRec, SASRecConfig


@dataclass(frozen=True)
class GNNConfig(SASRecConfig):
    graph: str = "old"  # "old": original rows only; "new": the whole current training file
    gnn_layer: int = 3
    window: int = 2
    normalization: str = "reference"  # "reference" (D⁻¹A + AD⁻¹, Q27) | "symmetric"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.graph not in ("old", "new"):
            raise ModelConfigError(f"graph must be 'old' or 'new', got {self.graph!r}")
        if self.normalization not in ("reference", "symmetric"):
            raise ModelConfigError(
                f"normalization must be 'reference' or 'symmetric', got {self.normalization!r}"
            )
        if self.gnn_layer < 0 or self.window < 1:
            raise ModelConfigError("gnn_layer must be >= 0 and window >= 1")


def graph_inputs(rows: TrainRows, graph: str) -> Sequences:
    """The sequences the graph is built from: every row's input part ``s[:-1]``."""
    if graph == "old":
        keep = np.flatnonzero(rows.source == int(RowSource.ORIGINAL))
        # one original row per user: regenerated files may carry the original rows twice (Q1)
        _, first = np.unique(rows.user[keep], return_index=True)
        keep = keep[np.sort(first)]
        if len(keep) == 0:
            raise ModelConfigError(
                "graph='old' needs original rows in the training file, found none"
            )
        seqs = rows.seqs.take(keep)
    else:
        seqs = rows.seqs
    return seqs.slice_rows(np.zeros(len(seqs), dtype=np.int64), seqs.lengths - 1)


def build_item_graph(
    seqs: Sequences, num_items: int, window: int, normalization: str
) -> sp.csr_matrix:
    """(N + 1) x (N + 1) normalised transition graph (row/col 0 = padding, isolated)."""
    items = seqs.items
    if len(items) and (items.min() < 1 or items.max() > num_items):
        raise ModelConfigError(f"graph rows hold item ids outside 1..{num_items}")
    row_of = np.repeat(np.arange(len(seqs)), seqs.lengths)
    src, dst, weight = [], [], []
    for k in range(1, window + 1):
        same_row = row_of[:-k] == row_of[k:] if len(items) > k else np.zeros(0, dtype=bool)
        idx = np.flatnonzero(same_row)
        src.append(items[idx])
        dst.append(items[idx + k])
        weight.append(np.full(len(idx), 1.0 / k))
    n = num_items + 1
    a = sp.coo_matrix(
        (np.concatenate(weight), (np.concatenate(src), np.concatenate(dst))), shape=(n, n)
    ).tocsr()  # duplicates summed
    a = (a + a.T + sp.identity(n, format="csr")).tocsr()
    if normalization == "reference":
        inv_nnz = sp.diags(1.0 / np.diff(a.indptr))
        norm = inv_nnz @ a + a @ inv_nnz
    else:
        inv_sqrt = sp.diags(1.0 / np.sqrt(np.asarray(a.sum(axis=1)).ravel()))
        norm = inv_sqrt @ a @ inv_sqrt
    norm = norm.tocsr()
    norm.sort_indices()
    # A is symmetrised above, so both normalisations are symmetric; the
    # propagation's backward relies on it
    return norm


class _SymmetricSpmm(torch.autograd.Function):
    """``adj @ x`` for a symmetric sparse ``adj``: the backward is ``adj @ grad``,
    which skips the transpose + coalesce autograd would redo on every batch."""

    @staticmethod
    def forward(ctx, adj: Tensor, x: Tensor) -> Tensor:
        ctx.adj = adj
        return adj @ x

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor]:
        return None, ctx.adj @ grad


class GNN(SASRec):
    name = "gnn"
    config_class = GNNConfig

    def __init__(
        self,
        num_items: int,
        config: GNNConfig,
        train: TrainRows | None = None,
        graph_rows: TrainRows | None = None,
        **ctx: Any,
    ) -> None:
        super().__init__(num_items, config)
        rows = graph_rows if graph_rows is not None else train
        if rows is None and not ctx.get("restoring", False):
            raise ModelConfigError(
                "GNN needs the training rows to build its item graph: pass train=TrainRows"
            )
        if rows is not None:
            norm = build_item_graph(
                graph_inputs(rows, config.graph), num_items, config.window, config.normalization
            )
            crow, col, val = norm.indptr, norm.indices, norm.data
        else:  # filled by load_state_dict
            crow, col, val = np.zeros(num_items + 2), np.zeros(0), np.zeros(0)
        self.register_buffer("graph_crow", torch.as_tensor(crow, dtype=torch.int64))
        self.register_buffer("graph_col", torch.as_tensor(col, dtype=torch.int64))
        self.register_buffer("graph_val", torch.as_tensor(val, dtype=torch.float32))
        self._cache: tuple[tuple, Tensor] | None = None
        self._adjacency: tuple[tuple, Tensor] | None = None

    @classmethod
    def for_restore(cls, num_items: int, config: GNNConfig) -> GNN:
        return cls(num_items, config, restoring=True)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # the graph's size is data-dependent: adopt the stored buffers' shapes
        for name in ("graph_crow", "graph_col", "graph_val"):
            if prefix + name in state_dict:
                setattr(
                    self,
                    name,
                    torch.empty_like(state_dict[prefix + name], device=getattr(self, name).device),
                )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def adjacency(self) -> Tensor:
        """Â as a sparse CSR tensor on the buffers' device, built once per buffer set."""
        key = tuple(
            (t.data_ptr(), t._version, t.device)
            for t in (self.graph_crow, self.graph_col, self.graph_val)
        )
        if self._adjacency is None or self._adjacency[0] != key:
            n = self.num_items + 1
            with warnings.catch_warnings():
                # torch flags all CSR tensors as "beta"; the spmm used here is long stable
                warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
                adj = torch.sparse_csr_tensor(
                    self.graph_crow, self.graph_col, self.graph_val, (n, n), check_invariants=False
                )
            self._adjacency = (key, adj)
        return self._adjacency[1]

    def propagate(self) -> Tensor:
        """Ẽ = mean(E, ÂE, …, Â^L E): (N + 1, d)."""
        e = self.item_emb.weight
        adj = self.adjacency()
        out, layer = e, e
        for _ in range(self.config.gnn_layer):
            layer = _SymmetricSpmm.apply(adj, layer)  # (N + 1, d)
            out = out + layer
        return out / (self.config.gnn_layer + 1)

    def input_table(self) -> Tensor:
        if torch.is_grad_enabled():
            self._cache = None
            return self.propagate()
        # ranking calls this once per batch without grad: reuse the table while
        # the weights are unchanged (every in-place update bumps _version)
        w = self.item_emb.weight
        key = (
            w._version,
            w.data_ptr(),
            w.device,
            self.graph_val._version,
            self.graph_val.data_ptr(),
        )
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self.propagate())
        return self._cache[1]
