from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torchmetrics.retrieval import RetrievalNormalizedDCG, RetrievalRecall

from models.batching import Batch
from models.data.sequences import EvalRows, Sequences
from models.evaluation import (
    EvaluationError,
    evaluate,
    metrics_from_ranks,
    paired_significance,
    ranks_from_scores,
    topk,
)
from models.recommenders.base import RecommenderConfig, SequentialRecommender


class FixedQueries(SequentialRecommender):
    """Scores = queries[row] · table[item]: a model whose ranking is known in advance."""

    name = "fixed"

    def __init__(self, table: torch.Tensor, queries: torch.Tensor) -> None:
        super().__init__(table.shape[0] - 1, RecommenderConfig(embed_dim=table.shape[1]))
        self.table = nn.Parameter(table)
        self.queries = queries

    def item_embeddings(self) -> torch.Tensor:
        return self.table

    def forward(self, batch: Batch) -> torch.Tensor:
        q = self.queries[batch.row]  # (B, d)
        return q[:, None, :].expand(-1, batch.input.shape[1], -1)


def _numpy_ranks(scores, history, target):
    ranks = []
    for s, h, t in zip(scores, history, target, strict=True):
        s = s.copy()
        if t in h:
            ranks.append(len(s))  # N + 1
            continue
        s[0] = -np.inf
        s[list(h)] = -np.inf
        ranks.append(1 + int((s > s[t]).sum()))
    return np.array(ranks)


def test_hand_computed_ranks():
    # 5 items, scores of item 0..5 per user
    scores = torch.tensor(
        [
            [9.0, 0.1, 0.5, 0.3, 0.9, 0.2],  # target 3; 4 and 2 beat it; history {4}: rank 2
            [9.0, 0.1, 0.5, 0.3, 0.9, 0.2],  # target 1; everything beats it: history {2}: rank 4
            [0.0, 0.5, 0.5, 0.5, 0.1, 0.2],  # target 2 tied with 1 and 3: uniform over 1..3
            [0.0, 0.5, 0.4, 0.3, 0.2, 0.1],  # target in history: unreachable
        ]
    )
    target = torch.tensor([3, 1, 2, 3])
    history = torch.tensor([[4, 0], [2, 0], [5, 0], [3, 1]])
    ranks, ties = ranks_from_scores(scores, target, history)
    assert ranks.tolist() == [2, 4, 2, 6]  # the tied target's expected rank is 1 + 2 / 2
    assert ties.tolist() == [0, 0, 2, 0]
    metrics, per_user = metrics_from_ranks(ranks.numpy(), ks=(1, 3), ties=ties.numpy())
    tied_ndcg3 = (1 + 1 / math.log2(3) + 1 / math.log2(4)) / 3  # mean over ranks 1, 2, 3
    assert per_user["recall@3"].tolist() == [1, 0, 1, 0]
    assert per_user["recall@1"].tolist() == pytest.approx([0, 0, 1 / 3, 0])
    assert per_user["ndcg@3"].tolist() == pytest.approx([1 / math.log2(3), 0, tied_ndcg3, 0])
    assert metrics["recall@1"] == pytest.approx(1 / 12)
    assert metrics["ndcg@3"] == pytest.approx((1 / math.log2(3) + tied_ndcg3) / 4)


def test_ranks_agree_with_torchmetrics():
    gen = torch.Generator().manual_seed(0)
    B, n_items, k = 40, 25, 5
    scores = torch.randn(B, n_items + 1, generator=gen)
    target = torch.randint(1, n_items + 1, (B,), generator=gen)
    history = torch.randint(0, n_items + 1, (B, 6), generator=gen)
    history[history == target[:, None]] = 0  # keep every target reachable here
    ranks, ties = ranks_from_scores(scores, target, history)
    assert not ties.any()  # continuous scores: torchmetrics' tie order never matters
    metrics, _ = metrics_from_ranks(ranks.numpy(), ks=(k,), ties=ties.numpy())
    # torchmetrics sees only the candidates that survive masking
    preds, rel, idx = [], [], []
    for u in range(B):
        masked = set(history[u].tolist()) | {0}
        for j in range(n_items + 1):
            if j not in masked:
                preds.append(float(scores[u, j]))
                rel.append(j == int(target[u]))
                idx.append(u)
    preds, rel, idx = torch.tensor(preds), torch.tensor(rel), torch.tensor(idx)
    ndcg = RetrievalNormalizedDCG(top_k=k)(preds, rel, indexes=idx)
    recall = RetrievalRecall(top_k=k)(preds, rel, indexes=idx)
    assert metrics[f"ndcg@{k}"] == pytest.approx(float(ndcg), abs=1e-6)
    assert metrics[f"recall@{k}"] == pytest.approx(float(recall), abs=1e-6)


def _fixed_setup(n_users=50, n_items=80, d=8, seed=1):
    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(n_items + 1, d, generator=gen)
    queries = torch.randn(n_users, d, generator=gen)
    rng = np.random.default_rng(seed)
    hist = Sequences.from_lists(
        [list(rng.integers(1, n_items + 1, size=rng.integers(1, 12))) for _ in range(n_users)]
    )
    target = rng.integers(1, n_items + 1, size=n_users)
    rows = EvalRows(hist, target, np.arange(1, n_users + 1))
    return FixedQueries(table, queries), rows, (queries @ table.T).numpy()


@pytest.mark.parametrize("item_chunk", [None, 7, 81])
def test_evaluate_matches_independent_ranking(item_chunk):
    model, rows, scores = _fixed_setup()
    expected = _numpy_ranks(scores, [set(h.tolist()) for h in rows.history], rows.target)
    result = evaluate(model, rows, ks=(10, 20), batch_size=16, item_chunk=item_chunk)
    assert result.ranks.tolist() == expected.tolist()
    assert set(result.metrics) == {"ndcg@10", "recall@10", "ndcg@20", "recall@20"}
    assert result.per_user["recall@20"].shape == (len(rows),)
    assert result.metrics["recall@20"] == pytest.approx(float((expected <= 20).mean()))


def test_target_in_history_is_a_miss():
    model, rows, _ = _fixed_setup()
    rows = EvalRows(rows.history, np.array([h[0] for h in rows.history]), rows.user)
    result = evaluate(model, rows, ks=(20,))
    assert np.all(result.ranks == model.num_items + 1)
    assert result.metrics["recall@20"] == 0.0


def test_topk_masks_history_and_orders_by_score():
    model, rows, scores = _fixed_setup()
    top = topk(model, rows, k=10, batch_size=16, item_chunk=9)
    for u in range(len(rows)):
        s = scores[u].copy()
        s[0] = -np.inf
        s[rows.history[u]] = -np.inf
        assert top[u].tolist() == np.argsort(-s, kind="stable")[:10].tolist()
    with pytest.raises(EvaluationError):
        topk(model, rows, k=0)


def test_evaluate_rejects_bad_input():
    model, rows, _ = _fixed_setup()
    with pytest.raises(EvaluationError, match="targets"):
        evaluate(model, EvalRows(rows.history, rows.target * 0, rows.user))
    with pytest.raises(EvaluationError, match="ks"):
        evaluate(model, rows, ks=())


def test_paired_significance():
    rng = np.random.default_rng(0)
    a = rng.random(200)
    b = a - 0.05 + rng.normal(0, 0.01, 200)
    out = paired_significance(a, b)
    assert out["mean_diff"] == pytest.approx(float((a - b).mean()))
    assert out["t_p"] < 1e-6 and out["wilcoxon_p"] < 1e-6 and out["t_stat"] > 0
    same = paired_significance(a, a.copy())
    assert same["t_p"] == 1.0 and same["wilcoxon_p"] == 1.0 and same["mean_diff"] == 0.0
    noise = paired_significance(a, a + rng.normal(0, 0.01, 200))
    assert noise["t_p"] > 0.001
    with pytest.raises(EvaluationError):
        paired_significance(a, b[:10])


def test_constant_model_scores_like_a_random_ranking():
    """A model that scores every item equally is a random ranking, not rank 1."""
    n_users, n_items = 400, 60
    model, rows, _ = _fixed_setup(n_users=n_users, n_items=n_items)
    with torch.no_grad():
        model.table.zero_()  # every score is exactly 0
    result = evaluate(model, rows, ks=(10, 20), batch_size=64, item_chunk=13)
    # reference: rank each target by a random permutation of the unmasked items
    rng = np.random.default_rng(0)
    draws = []
    for _ in range(200):
        ranks = []
        for h, t in zip(rows.history, rows.target, strict=True):
            masked = set(h.tolist()) | {0}
            if t in masked:
                ranks.append(n_items + 1)
                continue
            candidates = n_items - len(masked - {0})  # includes the target
            ranks.append(1 + int(rng.integers(0, candidates)))
        draws.append(metrics_from_ranks(np.array(ranks), ks=(10, 20))[0])
    for name in ("ndcg@10", "recall@10", "ndcg@20", "recall@20"):
        sampled = np.array([d[name] for d in draws])
        # the exact expectation sits inside the sampling spread of random rankings
        assert abs(result.metrics[name] - sampled.mean()) < 3 * sampled.std() / math.sqrt(len(draws)) + 1e-9
        assert result.metrics[name] < 0.5  # far from the 1.0 a favourable tie rule gives
    reachable = result.ties > 0
    assert reachable.any()
    assert np.all(result.ranks[reachable] == 1 + result.ties[reachable] / 2)


def test_expected_metrics_match_random_tie_breaking():
    """The closed-form expectation equals the mean over random tie orders."""
    rng = np.random.default_rng(3)
    higher = rng.integers(0, 15, size=300)
    ties = rng.integers(0, 12, size=300)
    ranks = 1 + higher + ties / 2
    metrics, _ = metrics_from_ranks(ranks, ks=(5, 10), ties=ties)
    sampled = [
        metrics_from_ranks(1 + higher + rng.integers(0, ties + 1), ks=(5, 10))[0] for _ in range(4000)
    ]
    for name, value in metrics.items():
        assert value == pytest.approx(np.mean([s[name] for s in sampled]), abs=4e-3)
