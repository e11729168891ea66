"""Smoke checks on the real Beauty file (skipped when ../shared/data is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.batching import BatchIterator
from models.data.sequences import EvalRows, Sequences
from models.data.split import leave_one_out
from models.evaluation import evaluate
from models.recommenders import build_model

BEAUTY = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "amazon-beauty.txt"

pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.skipif(not BEAUTY.is_file(), reason="shared Beauty data not available"),
]


@pytest.fixture(scope="module")
def beauty():
    with open(BEAUTY) as f:
        rows = [[int(x) for x in line.split()[1:]] for line in f if line.strip()]
    seqs = Sequences.from_lists(rows)
    return leave_one_out(seqs, max_len=50), int(seqs.items.max())


def test_beauty_batches_are_tight_and_models_step(beauty):
    split, n_items = beauty
    assert (len(split.train), n_items) == (22363, 12101)
    it = BatchIterator(split.train, 256, generator=np.random.default_rng(0), bucket_chunk=32)
    widths = [b.input.shape[1] for _, b in zip(range(20), it, strict=False)]
    assert max(widths) <= 50 and np.mean(widths) < 25  # far from padding every row to 50
    torch.manual_seed(0)
    for name in ("sasrec", "gnn"):
        model = build_model(name, n_items, train=split.train)
        batch = next(iter(BatchIterator(split.train, 64, transform=model.batch_transform())))
        loss = model.training_loss(batch)
        loss.backward()
        assert np.isfinite(loss.item())


def test_beauty_full_ranking_on_a_user_subset(beauty):
    split, n_items = beauty
    index = np.arange(0, len(split.test), 11)
    rows = EvalRows(
        split.test.history.take(index), split.test.target[index], split.test.user[index]
    )
    torch.manual_seed(0)
    model = build_model("sasrec", n_items)
    chunked = evaluate(model, rows, item_chunk=5000)
    whole = evaluate(model, rows)
    assert np.array_equal(chunked.ranks, whole.ranks)
    assert whole.ranks.min() >= 1 and whole.ranks.max() <= n_items + 1
    # an untrained model ranks the target near the middle of the catalogue
    assert 0.3 * n_items < np.median(whole.ranks) < 0.7 * n_items
