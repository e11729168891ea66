"""Full-ranking evaluation (spec §8) and paired significance tests.

Every user's query is scored against the whole catalogue; the pad id 0 and
every item of the user's history are set to -inf; the single held-out target
is compared with every unmasked item: ``h`` items score strictly higher and
``t`` items score exactly the same.

Ties are broken at random, in expectation: the target's rank is uniform over
``h + 1 .. h + 1 + t``, so its reported rank is the expected one,
``1 + h + t / 2`` (each tied item counts half a rank), and every metric is the
exact expectation over that uniform rank. A model that scores every item
equally therefore gets the metrics of a random ranking, not rank 1; early
stopping can never prefer it to a model that has learnt anything.

A target that occurs in its own history can never be hit (it is masked, quirk
Q30); its rank is reported as ``num_items + 1``, beyond every cut-off.

``Recall@K = 1[r <= K]`` and ``NDCG@K = 1[r <= K] / log2(r + 1)`` (one relevant
item, ideal DCG = 1) for a rank ``r``, each averaged over the ``t + 1`` equally
likely ranks of a tied target, then over users. Scores are computed in chunks of
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
    # (n,) float64 expected 1-based rank of each target (1 + higher + ties / 2);
    # num_items + 1 = unreachable
    ranks: np.ndarray
    ties: np.ndarray | None = None  # (n,) int64 unmasked items scoring exactly the target's score


def metrics_from_ranks(
    ranks: np.ndarray, ks: Sequence[int], ties: np.ndarray | None = None
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Per-user and mean Recall/NDCG@K.

    Without ``ties`` every rank is taken as exact (an integer rank). With
    ``ties`` (the number of items tied with the target), ``ranks`` are the
    expected ranks ``1 + h + t / 2`` and each metric is its exact expectation
    over the target's uniform rank in ``h + 1 .. h + 1 + t``.
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    t = np.zeros(len(ranks), dtype=np.int64) if ties is None else np.asarray(ties, dtype=np.int64)
    if t.shape != ranks.shape:
        raise EvaluationError(f"ties {t.shape} and ranks {ranks.shape} differ in shape")
    # h = items strictly above; exact for integer h because t / 2 is a half-integer at most
    h = np.rint(ranks - 1.0 - t / 2.0).astype(np.int64)
    per_user: dict[str, np.ndarray] = {}
    for k in ks:
        # prefix[n] = sum of 1/log2(r + 1) for r = 1..n, n = 0..k
        prefix = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))])
        lo = np.clip(h, 0, k)  # ranks 1..lo are not reachable by this target
        hi = np.clip(h + 1 + t, 0, k)  # the best hi - lo of its t + 1 ranks fall within k
        per_user[f"ndcg@{k}"] = (prefix[hi] - prefix[lo]) / (t + 1)
        per_user[f"recall@{k}"] = (hi - lo) / (t + 1)
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


def _count_above(scores: Tensor, threshold: Tensor) -> tuple[Tensor, Tensor]:
    """#entries of each row of ``scores`` (B, C) strictly above and exactly equal
    to ``threshold`` (B, 1) (finite); -inf entries count as below.

    Overwrites ``scores`` with sign(score - threshold) in {-1, 0, 1}; with
    a = Σ sign and b = Σ |sign|: above = (a + b) / 2, equal = C - b. Both sums
    are in float, exact up to 2**24 columns (see _chunk_size): comparing into
    boolean tensors and summing them would copy each to int64, which took longer
    than the scoring matmul itself.
    """
    signs = scores.sub_(threshold).sign_()
    a = signs.sum(1)
    b = signs.abs_().sum(1)
    return ((a + b) / 2).long(), (scores.shape[1] - b).long()


def ranks_from_scores(scores: Tensor, target: Tensor, history: Tensor) -> tuple[Tensor, Tensor]:
    """Expected ranks and tie counts from a precomputed score matrix.

    scores (B, N + 1) with column j = item j, target (B,), history (B, H) 0-padded.
    Returns (B,) float64 expected ranks, 1 + #unmasked items scoring strictly
    above the target + half the #unmasked items tied with it (``N + 1`` where the
    target is itself masked), and (B,) long tie counts; pass both to
    :func:`metrics_from_ranks`.
    """
    target_score = scores.gather(1, target[:, None])  # (B, 1)
    masked = torch.cat([scores, scores.new_zeros(scores.shape[0], 1)], 1)  # spare column
    C = scores.shape[1]
    ids = torch.cat([history, target[:, None]], 1)
    masked.scatter_(1, torch.where(ids < C, ids, C), float("-inf"))
    masked[:, 0] = masked[:, C] = float("-inf")
    return _finish_ranks(*_count_above(masked, target_score), target, history, C - 1)


def _finish_ranks(
    higher: Tensor, ties: Tensor, target: Tensor, history: Tensor, num_items: int
) -> tuple[Tensor, Tensor]:
    """(expected rank as float64, ties as long); unreachable targets get rank
    ``num_items + 1`` and no ties."""
    unreachable = (history == target[:, None]).any(1)
    rank = higher.double() + 1.0 + ties.double() / 2.0
    return (
        torch.where(unreachable, torch.full_like(rank, num_items + 1), rank),
        torch.where(unreachable, torch.zeros_like(ties), ties),
    )


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
        ranks = np.empty(len(rows), dtype=np.float64)
        ties = np.empty(len(rows), dtype=np.int64)
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
            tied = torch.zeros(len(b), dtype=torch.long, device=dev)
            for start, part in chunks:
                above, equal = _count_above(_masked_scores(h, start, part, ids), target_score)
                higher += above
                tied += equal
            rank, tie = _finish_ranks(higher, tied, target, history, model.num_items)
            ranks[batch.row.numpy()] = rank.cpu().numpy()
            ties[batch.row.numpy()] = tie.cpu().numpy()
    finally:
        model.train(was_training)
    metrics, per_user = metrics_from_ranks(ranks, ks, ties)
    return EvalResult(metrics, per_user, ranks, ties)


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
