"""``TrainConfig.loss_scale``: with length-bucketed batches, 'batch' (the
per-batch mean) gives a batch of two-item rows as much weight as a batch of
long rows; 'epoch' divides each batch's summed losses by the epoch's mean
target positions per batch, so every position weighs the same whatever the
batching (what uniformly shuffled batches give in expectation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from models.batching import BatchIterator
from models.config import TrainJobConfig
from models.data.sequences import EvalRows, RowSource, Sequences, TrainRows
from models.loss_scale import mean_positions as _mean_positions
from models.recommenders import build_model
from models.training import train_model

N = 40


def _mixed_rows(seed: int = 0) -> TrainRows:
    """40 long rows (18-21 items) and 120 two-item rows: the bigrams hold most
    rows but few target positions."""
    rng = np.random.default_rng(seed)
    long = [list(rng.integers(1, N + 1, size=rng.integers(18, 22))) for _ in range(40)]
    short = [list(rng.integers(1, N + 1, size=2)) for _ in range(120)]
    seqs = Sequences.from_lists(long + short)
    source = np.array([RowSource.ORIGINAL] * 40 + [RowSource.PATTERN] * 120, dtype=np.uint8)
    rows = TrainRows.build(seqs, RowSource.ORIGINAL, np.arange(1, 161))
    return TrainRows(rows.seqs, source, rows.user)


def _epoch_losses(model, rows: TrainRows, positions_of) -> tuple[float, float]:
    """(loss mass from the long rows, from the two-item rows) over one
    bucketed epoch: each batch's CE loss with the given denominator."""
    it = BatchIterator(rows, 32, generator=np.random.default_rng(3), bucket_chunk=4,
                       transform=model.batch_transform())
    long_mass = short_mass = 0.0
    with torch.no_grad():
        for index in it.batch_indices():
            batch = it.transform.collate(rows, it.examples, index)
            loss = float(model.training_loss(batch, "ce", positions_of(it, batch)))
            share = batch.lengths.float()
            long_part = float(share[batch.source == RowSource.ORIGINAL].sum() / share.sum())
            long_mass += loss * long_part
            short_mass += loss * (1 - long_part)
    return long_mass, short_mass


def test_epoch_scale_weighs_every_position_alike_under_bucketing() -> None:
    torch.manual_seed(0)
    rows = _mixed_rows()
    model = build_model("sasrec", N, {"max_len": 20})
    model.eval()  # no dropout: the losses are deterministic under CE
    it = BatchIterator(rows, 32, bucket_chunk=4, transform=model.batch_transform())
    total_positions = float(it.examples.input_lengths.sum())
    assert _mean_positions(it) == pytest.approx(total_positions / len(it))
    short_positions = 120 / total_positions  # each two-item row has one target

    long_b, short_b = _epoch_losses(model, rows, lambda it, b: None)
    long_e, short_e = _epoch_losses(model, rows, lambda it, b: _mean_positions(it))
    # 'batch': most batches are bigram batches, each weighing as much as a long-row batch
    assert short_b / (long_b + short_b) > 0.5 > 3 * short_positions
    # 'epoch': the bigrams' share of the loss is about their share of positions
    # (their losses are not equal to the long rows' per position, hence the margin)
    assert short_e / (long_e + short_e) == pytest.approx(short_positions, rel=0.35)


def test_epoch_scale_is_the_epoch_sum_over_mean_positions() -> None:
    torch.manual_seed(1)
    rows = _mixed_rows(1)
    model = build_model("sasrec", N, {"max_len": 20})
    model.eval()
    it = BatchIterator(rows, 32, generator=np.random.default_rng(0), bucket_chunk=4,
                       transform=model.batch_transform())
    p = _mean_positions(it)
    with torch.no_grad():
        summed = sum(
            float(model.training_loss(it.transform.collate(rows, it.examples, i), "ce", p))
            for i in it.batch_indices()
        )
        whole = it.transform.collate(rows, it.examples, np.arange(len(rows)))
        per_position = float(model.training_loss(whole, "ce"))  # mean over every target
    # sum over batches of (batch sum / p) = (epoch sum) / p = mean over positions x batches
    assert summed == pytest.approx(per_position * len(it), rel=1e-4)


def test_row_scale_is_the_mean_of_each_rows_own_mean() -> None:
    """'row': every row weighs the same whatever its length, in any batch."""
    torch.manual_seed(2)
    rows = _mixed_rows(3)
    model = build_model("sasrec", N, {"max_len": 20})
    model.eval()
    index = np.arange(30, 70)  # 10 long rows and 30 two-item rows in one batch
    it = BatchIterator(rows, 64, transform=model.batch_transform())
    batch = it.transform.collate(rows, it.examples, index)
    with torch.no_grad():
        pl = model.position_losses(batch, "ce")
        per_row = [float(pl.loss[r][pl.valid[r]].mean()) for r in range(len(index))]
        by_row = float(model.training_loss(batch, "ce", "row"))
        by_position = float(model.training_loss(batch, "ce"))
    assert by_row == pytest.approx(float(np.mean(per_row)), rel=1e-5)
    # the batch mean weighs the long rows' many targets more: a different number
    assert by_position == pytest.approx(float(pl.loss.sum() / pl.valid.sum()), rel=1e-5)
    assert abs(by_row - by_position) > 1e-3


def test_weighted_loss_with_row_scale_weighs_each_row_by_its_own_targets() -> None:
    from models.personalizer import weighted_position_loss

    loss = torch.tensor([[1.0, 3.0, 5.0], [2.0, 0.0, 0.0], [9.0, 9.0, 9.0]])
    valid = torch.tensor([[True, True, True], [True, False, False], [False, False, False]])
    weights = torch.tensor([[1.0, 1.0, 1.0], [0.5, 0.0, 0.0], [1.0, 1.0, 1.0]])
    # row 1: (1 + 3 + 5) / 3 = 3; row 2: 0.5 * 2 / 1 = 1; row 3 has no target and is left out
    assert float(weighted_position_loss(loss, valid, weights, "row")) == pytest.approx(2.0)
    assert float(weighted_position_loss(loss, valid, weights)) == pytest.approx(10.0 / 4)


def test_training_runs_with_epoch_scale() -> None:
    rows = _mixed_rows(2)
    valid = EvalRows(Sequences.from_lists([[1, 2, 3]] * 10), np.arange(1, 11) % N + 1, np.arange(1, 11))
    cfg = TrainJobConfig(epochs=2, patience=2, loss_scale="epoch", device="cpu", batch_size=32)
    result = train_model(rows, valid, valid, N, cfg.train_config())
    assert all(np.isfinite(h["loss"]) for h in result.history) and result.epochs_run == 2
    row = train_model(rows, valid, valid, N, TrainJobConfig(
        epochs=1, patience=2, loss_scale="row", device="cpu", batch_size=32).train_config())
    assert row.loss_scale == "row" and np.isfinite(row.history[0]["loss"])
    with pytest.raises(ValidationError, match="loss_scale"):
        TrainJobConfig(loss_scale="position")


def test_auto_picks_epoch_only_when_bucketing_would_overweight_short_synthetic_rows() -> None:
    from models.batching import AllPositions
    from models.config import TrainConfig
    from models.loss_scale import OVERWEIGHT_LIMIT, resolve_loss_scale, synthetic_overweight

    transform = AllPositions(max_len=20)
    dense = _mixed_rows()  # long original rows beside two-item pattern rows (ml-100k's shape)
    rng = np.random.default_rng(5)
    # Beauty's shape: short original rows (4-9 items) beside two- and three-item rows
    short = [list(rng.integers(1, N + 1, size=rng.integers(4, 10))) for _ in range(100)]
    frag = [list(rng.integers(1, N + 1, size=rng.integers(2, 4))) for _ in range(300)]
    sparse = TrainRows(Sequences.from_lists(short + frag),
                       np.array([RowSource.ORIGINAL] * 100 + [RowSource.PATTERN] * 300, dtype=np.uint8),
                       np.zeros(400, dtype=np.int64))
    original_only = TrainRows.build(Sequences.from_lists(short), RowSource.ORIGINAL)

    assert synthetic_overweight(dense, transform) > OVERWEIGHT_LIMIT
    assert 1.0 < synthetic_overweight(sparse, transform) < OVERWEIGHT_LIMIT
    assert synthetic_overweight(original_only, transform) == 0.0
    auto = TrainConfig(bucket_chunk=32)  # 'auto' only matters under length bucketing
    assert TrainConfig().loss_scale == "auto"
    assert resolve_loss_scale(auto, dense, transform) == "epoch"
    assert resolve_loss_scale(auto, sparse, transform) == "batch"
    assert resolve_loss_scale(auto, original_only, transform) == "batch"
    # uniform batches (the default) weigh rows by their positions already; an explicit value wins
    assert TrainConfig().bucket_chunk == 0
    assert resolve_loss_scale(TrainConfig(), dense, transform) == "batch"
    assert resolve_loss_scale(TrainConfig(bucket_chunk=32, loss_scale="batch"), dense, transform) == "batch"
    assert resolve_loss_scale(TrainConfig(loss_scale="epoch"), sparse, transform) == "epoch"


def test_the_run_reports_the_scale_it_used() -> None:
    valid = EvalRows(Sequences.from_lists([[1, 2, 3]] * 10), np.arange(1, 11) % N + 1, np.arange(1, 11))
    cfg = TrainJobConfig(epochs=1, patience=1, device="cpu", batch_size=32, bucket_chunk=32)
    assert train_model(_mixed_rows(3), valid, valid, N, cfg.train_config()).loss_scale == "epoch"
