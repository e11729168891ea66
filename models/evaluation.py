"""Full-ranking evaluation (spec §8) and paired significance tests.

Every user's query is scored against the whole catalogue; the pad id 0 and
every item of the user's history are set to -inf; the single held-out target
gets the 1-based rank ``r = 1 + #items with a strictly higher score``.

Ties are resolved in the target's favour (an item with exactly the target's
score does not push it down). With float scores exact ties are rare; a model
that scores everything equal therefore gets rank 1 for every user, which is
why untrained-model sanity checks should compare against a baseline rather
than against zero.

A target that occurs in its own history can never be hit (it is masked, quirk
Q30); its rank is reported as ``num_items + 1``, beyond every cut-off.

``Recall@K = 1[r <= K]`` and ``NDCG@K = 1[r <= K] / log2(r + 1)`` (one relevant
item, ideal DCG = 1), averaged over users. Scores are computed in chunks of
items so memory stays ``batch x chunk`` however large the catalogue.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from models.batching import eval_batches
from models.data.sequences import EvalRows
from models.recommenders.base import SequentialRecommender, resolve_device

# scores held at once per batch when item_chunk is not given (≈ 128 MiB of fp32)
_SCORE_BUDGET = 1 << 25


class EvaluationError(ValueError):
    """Evaluation rows or parameters that cannot be ranked."""


@dataclass
class EvalResult:
    metrics: dict[str, float]  # e.g. {"ndcg@10": ..., "recall@10": ..., "ndcg@20": ...}
    per_user: dict[str, np.ndarray]  # same keys, one value per row of the EvalRows
    ranks: np.ndarray  # (n,) int64 1-based rank of each target; num_items + 1 = unreachable


def metrics_from_ranks(
    ranks: np.ndarray, ks: Sequence[int]
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    ranks = np.asarray(ranks, dtype=np.int64)
    per_user: dict[str, np.ndarray] = {}
    for k in ks:
        hit = ranks <= k
        per_user[f"ndcg@{k}"] = np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0)
        per_user[f"recall@{k}"] = hit.astype(np.float64)
    metrics = {name: float(v.mean()) if len(v) else 0.0 for name, v in per_user.items()}
    return metrics, per_user


def _chunk_size(num_scores: int, batch: int, item_chunk: int | None) -> int:
    if item_chunk is not None:
        if item_chunk < 1:
            raise EvaluationError(f"item_chunk must be >= 1, got {item_chunk}")
        chunk = item_chunk
    else:
        chunk = max(1, _SCORE_BUDGET // max(batch, 1))
    # _count_above sums 0/1 in float32, exact while a chunk has at most 2**24 columns
    return min(chunk, num_scores, 1 << 24)


def _chunks(table: Tensor, chunk: int) -> list[tuple[int, Tensor]]:
    """Split the scoring table into item chunks, each with one spare all-zero row.

    Masked ids are written into the score matrix with one ``scatter_``; ids that
    fall outside a chunk are routed to the spare column, which is itself masked,
    so no dense boolean mask of the batch x chunk size is ever built.
    """
    out = []
    for start in range(0, table.shape[0], chunk):
        part = table[start : start + chunk]  # (C, d)
        out.append((start, torch.cat([part, part.new_zeros(1, part.shape[1])])))  # (C + 1, d)
    return out


def _masked_scores(h: Tensor, start: int, part: Tensor, ids: Tensor) -> Tensor:
    """h (B, d) x chunk ``part`` (C + 1, d) -> scores (B, C + 1) with -inf on the
    pad id, on every id of ``ids`` (B, H) inside the chunk and on the spare column."""
    scores = h @ part.T  # (B, C + 1)
    C = part.shape[0] - 1
    local = ids - start
    scores.scatter_(1, torch.where((local >= 0) & (local < C), local, C), float("-inf"))
    scores[:, C] = float("-inf")
    if start == 0:
        scores[:, 0] = float("-inf")  # pad id
    return scores


def _count_above(scores: Tensor, threshold: Tensor) -> Tensor:
    """#entries of each row of ``scores`` (B, C) strictly above ``threshold`` (B, 1).

    Overwrites ``scores`` with 0/1 and sums in float (exact up to 2**24 columns,
    see _chunk_size): summing a boolean tensor would first copy it to int64,
    which took longer than the scoring matmul itself.
    """
    return scores.gt_(threshold).sum(1).long()


def ranks_from_scores(scores: Tensor, target: Tensor, history: Tensor) -> Tensor:
    """Ranks from a precomputed score matrix.

    scores (B, N + 1) with column j = item j, target (B,), history (B, H) 0-padded.
    Returns (B,) long: 1 + #unmasked items scoring strictly above the target,
    ``N + 1`` where the target is itself masked.
    """
    target_score = scores.gather(1, target[:, None])  # (B, 1)
    masked = torch.cat([scores, scores.new_zeros(scores.shape[0], 1)], 1)  # spare column
    C = scores.shape[1]
    ids = torch.cat([history, target[:, None]], 1)
    masked.scatter_(1, torch.where(ids < C, ids, C), float("-inf"))
    masked[:, 0] = masked[:, C] = float("-inf")
    return _finish_ranks(_count_above(masked, target_score), target, history, C - 1)


def _finish_ranks(higher: Tensor, target: Tensor, history: Tensor, num_items: int) -> Tensor:
    unreachable = (history == target[:, None]).any(1)
    return torch.where(unreachable, torch.full_like(higher, num_items + 1), higher + 1)


def _history_matrix(rows: EvalRows, index: np.ndarray, device: torch.device) -> Tensor:
    return torch.from_numpy(rows.history.take(index).pad()).to(device)  # (B, H), the full history


def _check_rows(model: SequentialRecommender, rows: EvalRows) -> None:
    if len(rows) == 0:
        raise EvaluationError("no evaluation rows")
    t = np.asarray(rows.target)
    if t.min() < 1 or t.max() > model.num_items:
        raise EvaluationError(
            f"evaluation targets must lie in 1..{model.num_items}, got {t.min()}..{t.max()}"
        )


def _model_device(model: SequentialRecommender, device: str | torch.device | None) -> torch.device:
    if device is None:
        return next(model.parameters()).device
    dev = resolve_device(device)
    model.to(dev)
    return dev


@torch.no_grad()
def evaluate(
    model: SequentialRecommender,
    rows: EvalRows,
    ks: Sequence[int] = (10, 20),
    batch_size: int = 2048,
    item_chunk: int | None = None,
    device: str | torch.device | None = None,
) -> EvalResult:
    """Full-ranking Recall/NDCG@K of ``model`` on ``rows``.

    ``device=None`` evaluates where the model lives; a device name moves the
    model there first. The model's train/eval mode is restored afterwards.
    """
    if not ks or min(ks) < 1:
        raise EvaluationError(f"ks must be positive cut-offs, got {tuple(ks)}")
    _check_rows(model, rows)
    dev = _model_device(model, device)
    was_training = model.training
    model.eval()
    try:
        table = model.item_embeddings()  # (N + 1, d)
        chunks = _chunks(table, _chunk_size(table.shape[0], min(batch_size, len(rows)), item_chunk))
        ranks = np.empty(len(rows), dtype=np.int64)
        for batch in eval_batches(rows, batch_size, model.batch_transform()):
            b = batch.to(dev)
            h = model.last_hidden(b)  # (B, d)
            if not bool(torch.isfinite(h).all()):
                raise EvaluationError("the model produced non-finite query vectors")
            target = b.target[:, 0]  # (B,)
            history = _history_matrix(rows, batch.row.numpy(), dev)
            # the target is compared against its dot product and excluded from the
            # count itself, so a chunked matmul's rounding cannot make it outrank itself
            target_score = (h * table[target]).sum(-1, keepdim=True)  # (B, 1)
            ids = torch.cat([history, target[:, None]], 1)  # (B, H + 1)
            higher = torch.zeros(len(b), dtype=torch.long, device=dev)
            for start, part in chunks:
                higher += _count_above(_masked_scores(h, start, part, ids), target_score)
            ranks[batch.row.numpy()] = (
                _finish_ranks(higher, target, history, model.num_items).cpu().numpy()
            )
    finally:
        model.train(was_training)
    metrics, per_user = metrics_from_ranks(ranks, ks)
    return EvalResult(metrics, per_user, ranks)


@torch.no_grad()
def topk(
    model: SequentialRecommender,
    rows: EvalRows,
    k: int = 100,
    batch_size: int = 2048,
    item_chunk: int | None = None,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """(n, k) item ids by decreasing score, history and pad id masked.

    Slots that only masked items could fill (a history longer than N - k) hold 0.
    """
    if len(rows) == 0:
        raise EvaluationError("no evaluation rows")
    if not 1 <= k <= model.num_items:
        raise EvaluationError(f"k must be in 1..{model.num_items}, got {k}")
    dev = _model_device(model, device)
    was_training = model.training
    model.eval()
    out = np.zeros((len(rows), k), dtype=np.int64)
    try:
        table = model.item_embeddings()
        chunks = _chunks(table, _chunk_size(table.shape[0], min(batch_size, len(rows)), item_chunk))
        for batch in eval_batches(rows, batch_size, model.batch_transform()):
            b = batch.to(dev)
            h = model.last_hidden(b)  # (B, d)
            history = _history_matrix(rows, batch.row.numpy(), dev)
            best_val = torch.full((len(b), 0), float("-inf"), device=dev)
            best_id = torch.zeros((len(b), 0), dtype=torch.long, device=dev)
            for start, part in chunks:
                scores = _masked_scores(h, start, part, history)  # (B, C + 1)
                val, idx = scores.topk(min(k, scores.shape[1]), dim=1)
                best_val = torch.cat([best_val, val], 1)
                best_id = torch.cat([best_id, idx + start], 1)
                best_val, order = best_val.topk(min(k, best_val.shape[1]), dim=1)
                best_id = best_id.gather(1, order)
            best_id = best_id.masked_fill(torch.isneginf(best_val), 0)
            out[batch.row.numpy()] = best_id.cpu().numpy()
    finally:
        model.train(was_training)
    return out


def paired_significance(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Paired t-test and Wilcoxon signed-rank test of per-user scores ``a`` vs ``b``.

    When every difference is zero both tests are undefined; they are reported
    as no evidence of a difference (statistic 0, p = 1).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise EvaluationError(
            f"paired scores need two 1-D arrays of equal length, got {a.shape} and {b.shape}"
        )
    if len(a) < 2:
        raise EvaluationError("paired tests need at least 2 users")
    diff = a - b
    out = {"mean_diff": float(diff.mean()), "n": float(len(a))}
    if not np.any(diff):
        out.update(t_stat=0.0, t_p=1.0, wilcoxon_stat=0.0, wilcoxon_p=1.0)
        return out
    if np.all(diff == diff[0]):
        # constant non-zero difference: the t statistic is infinite (zero variance)
        out.update(t_stat=float(np.sign(diff[0]) * np.inf), t_p=0.0)
    else:
        t = stats.ttest_rel(a, b)
        out.update(t_stat=float(t.statistic), t_p=float(t.pvalue))
    w = stats.wilcoxon(a, b)
    out.update(wilcoxon_stat=float(w.statistic), wilcoxon_p=float(w.pvalue))
    return out


__all__ = [
    "EvalResult",
    "EvaluationError",
    "evaluate",
    "metrics_from_ranks",
    "paired_significance",
    "ranks_from_scores",
    "resolve_device",
    "topk",
]
