"""TrainConfig.forward_slices: the training forward over length-sorted slices of
a uniform batch gives the one-piece forward's outputs, losses and gradients."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from models.batching import BatchIterator, PrefixExpansion
from models.data.sequences import RowSource, Sequences, TrainRows
from models.recommenders import MODELS, build_model
from models.recommenders.base import slice_bounds, sliced_forward

N = 40
DYNAMIC = sorted(name for name in MODELS if name != "fmlp")


def _rows(seed=0, n=48):
    # mostly short rows and a few long ones, as in regenerated training data
    rng = np.random.default_rng(seed)
    lengths = np.where(rng.random(n) < 0.2, rng.integers(10, 14, n), rng.integers(2, 5, n))
    lists = [list(rng.integers(1, N + 1, size=int(k))) for k in lengths]
    return TrainRows.build(Sequences.from_lists(lists), RowSource.ORIGINAL, np.arange(1, n + 1))


def _batch(model, rows):
    it = BatchIterator(rows, 32, generator=np.random.default_rng(3), transform=model.batch_transform())
    return next(iter(it))


def _loss_and_grads(name, slices, loss):
    torch.manual_seed(0)
    rows = _rows()
    model = build_model(name, N, {"max_len": 12}, train=rows)
    model.forward_slices = slices
    model.eval()  # no dropout: the only random draws left are the negatives, drawn after the forward
    batch = _batch(model, rows)
    torch.manual_seed(1)
    value = model.training_loss(batch, loss)
    value.backward()
    return value.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("loss", ["bce", "ce"])
@pytest.mark.parametrize("name", DYNAMIC)
def test_sliced_training_loss_and_gradients_equal_the_one_piece_forward(name, loss):
    whole, g_whole = _loss_and_grads(name, 1, loss)
    sliced, g_sliced = _loss_and_grads(name, 4, loss)
    assert torch.allclose(whole, sliced, rtol=1e-5, atol=1e-7)
    assert g_whole.keys() == g_sliced.keys() and g_whole
    for key in g_whole:
        assert torch.allclose(g_whole[key], g_sliced[key], rtol=1e-4, atol=1e-7), key


@pytest.mark.parametrize("name", DYNAMIC)
def test_sliced_forward_keeps_row_order_width_and_zero_padding(name):
    torch.manual_seed(0)
    rows = _rows(seed=5)
    model = build_model(name, N, {"max_len": 12}, train=rows).eval()
    batch = _batch(model, rows)
    assert batch.lengths.min() < batch.input.shape[1]  # the batch really has padding to save
    whole = model(batch)
    for slices in (2, 3, 7, 32, 100):  # more slices than rows: one row per slice
        out = sliced_forward(model, batch, slices)
        assert out.shape == whole.shape
        assert torch.allclose(out, whole, rtol=1e-5, atol=1e-6), slices
        beyond = torch.arange(out.shape[1])[None, :] >= batch.lengths[:, None]
        assert torch.all(out[beyond] == 0)


def test_sliced_forward_runs_each_slice_at_its_own_width():
    torch.manual_seed(0)
    rows = _rows(seed=7)
    model = build_model("sasrec", N, {"max_len": 12}, train=rows).eval()
    batch = _batch(model, rows)
    widths = []
    handle = model.register_forward_pre_hook(lambda m, args: widths.append(args[0].input.shape[1]))
    sliced_forward(model, batch, 4)
    handle.remove()
    lengths = np.sort(batch.lengths.numpy())
    ends = slice_bounds(lengths, 4)
    assert widths == [int(lengths[e - 1]) for e in ends]
    assert 1 < len(widths) <= 4 and widths[0] < batch.input.shape[1]


def _area(lengths, ends):
    starts = [0, *ends[:-1]]
    return sum((e - s) * int(lengths[e - 1]) for s, e in zip(starts, ends, strict=True))


@pytest.mark.parametrize("seed", range(25))
def test_slice_bounds_pad_least_among_all_cuts(seed):
    rng = np.random.default_rng(seed)
    lengths = np.sort(rng.choice([1, 2, 2, 3, 5, 8, 13, 20, 50], size=int(rng.integers(1, 12))))
    for slices in (1, 2, 3, 4):
        ends = slice_bounds(lengths, slices)
        assert ends == sorted(set(ends)) and ends[-1] == len(lengths) and len(ends) <= slices
        n = len(lengths)
        brute = min(
            _area(lengths, [*cuts, n])
            for k in range(min(slices, n))
            for cuts in itertools.combinations(range(1, n), k)
        )
        assert _area(lengths, ends) == brute


def test_slice_bounds_on_a_long_tail():
    # 250 two-item rows and six long ones: the long ones get their own slice
    lengths = np.sort(np.r_[np.full(250, 2), [30, 35, 40, 45, 50, 50]])
    assert slice_bounds(lengths, 2) == [250, 256]
    assert slice_bounds(lengths, 1) == [256]


def test_fixed_width_batches_run_in_one_piece():
    torch.manual_seed(0)
    rows = _rows()
    model = build_model("fmlp", N, {"max_len": 12}, train=rows).eval()
    batch = _batch(model, rows)
    assert isinstance(model.batch_transform(), PrefixExpansion) and batch.left_padded
    calls = []
    handle = model.register_forward_pre_hook(lambda m, args: calls.append(1))
    sliced_forward(model, batch, 4)
    handle.remove()
    assert calls == [1]


def test_bce_scores_valid_positions_with_the_full_grid_of_negatives():
    # the loss gathers only valid positions but draws a negative for every slot, as before,
    # so runs keep their random stream; padding positions get loss 0
    torch.manual_seed(0)
    rows = _rows(seed=9)
    model = build_model("sasrec", N, {"max_len": 12}, train=rows).eval()
    batch = _batch(model, rows)
    h, table = model(batch), model.item_embeddings()
    torch.manual_seed(4)
    negatives = model.sample_negatives(batch.target)
    pos = (h * table[batch.target]).sum(-1)
    neg = (h * table[negatives]).sum(-1)
    expected = (torch.nn.functional.softplus(-pos) + torch.nn.functional.softplus(neg)) * batch.valid
    torch.manual_seed(4)
    pl = model.position_losses(batch, "bce")
    after_loss = torch.randint(1, N + 1, (5,))
    assert torch.allclose(pl.loss, expected, rtol=1e-6, atol=1e-7)
    assert torch.all(pl.loss[~batch.valid] == 0)
    torch.manual_seed(4)
    model.sample_negatives(batch.target)
    assert torch.equal(torch.randint(1, N + 1, (5,)), after_loss)  # one (B, T) draw, nothing more
