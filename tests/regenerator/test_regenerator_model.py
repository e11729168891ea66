"""The regenerator model, its fast restricted loss, training and persistence."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from regen_helpers import PLANTED, make_planted, tiny_config

from models.data.sequences import Sequences
from models.regenerator import (
    PairBatches,
    Regenerator,
    RegeneratorConfig,
    RegeneratorInputError,
    check_pairs,
    dropout_mask,
    load_regenerator,
    save_regenerator,
    train_regenerator,
    use_native_dropout,
    wrap_tokens,
)


def test_profiles_flip_every_quirk_flag():
    parity, fixed = RegeneratorConfig.parity(), RegeneratorConfig.fixed()
    assert (parity.d_model, parity.n_heads, parity.ffn_dim, parity.num_memories) == (64, 2, 256, 5)
    assert (parity.dropout, parity.layer_norm_eps, parity.batch_size, parity.epochs) == (0.5, 1e-12, 256, 40)
    assert (parity.max_decode_len, parity.restrictive_steps, parity.seed) == (25, 2, 2024)
    flags = ("encoder_mask_train", "lr_schedule_per", "decode_policy", "emit_pad",
             "drop_last_token", "original_rows")
    assert [getattr(parity, f) for f in flags] == ["causal", "batch", "parity", True, True, "twice"]
    assert [getattr(fixed, f) for f in flags] == ["none", "epoch", "bernoulli", False, False, "once"]
    assert RegeneratorConfig.model_validate(json.loads(json.dumps(fixed.to_dict()))) == fixed


@pytest.mark.parametrize("bad", [dict(encoder_mask_train="sometimes"), dict(d_model=63),
                                 dict(gamma=1.5), dict(max_decode_len=60), dict(epochs=0)])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        RegeneratorConfig(**bad)


def _batch(num_items: int, rows: list[list[int]], pats: list[list[int]], sos: int, eos: int):
    src, _ = wrap_tokens(Sequences.from_lists(rows), sos, eos)
    tgt, _ = wrap_tokens(Sequences.from_lists(pats), sos, eos)
    return torch.from_numpy(src), torch.from_numpy(tgt)


@pytest.mark.parametrize("mask", ["causal", "none"])
def test_restricted_loss_equals_full_masked_softmax(mask):
    """The fast path (packed tokens, grouped attention, folded memory mixture,
    softmax over each source's own tokens) equals the reference's full
    (B, T, N+3) masked softmax, with repeated items in the sources."""
    torch.manual_seed(0)
    n = 12
    config = tiny_config(dropout=0.0, encoder_mask_train=mask)
    model = Regenerator(n, config).double().train()
    rng = np.random.default_rng(1)
    rows, pats = [], []
    for _ in range(20):
        row = rng.integers(1, n + 1, size=int(rng.integers(2, 15))).tolist()
        row[-1] = row[0]  # every source repeats an item
        keep = np.sort(rng.choice(len(row), size=int(rng.integers(1, min(5, len(row)) + 1)), replace=False))
        rows.append(row)
        pats.append([row[j] for j in keep])
    src, tgt = _batch(n, rows, pats, model.sos, model.eos)
    order = torch.argsort((src != 0).sum(1), stable=True)  # grouped attention wants sorted rows
    src, tgt = src[order], tgt[order]
    torch.manual_seed(5)  # same Gumbel noise for both
    fast, ent_fast = model.losses(src, tgt, 0.7, groups=3)
    fast.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    # the reference pads sources wider and targets to 20 columns
    wide_src = torch.cat([src, src.new_zeros(len(src), 9)], 1)
    wide_tgt = torch.cat([tgt, tgt.new_zeros(len(tgt), 20 - tgt.shape[1])], 1)
    torch.manual_seed(5)
    slow, ent_slow = model.losses(wide_src, wide_tgt, 0.7, reference=True)
    slow.backward()
    assert abs(fast.item() - slow.item()) < 1e-5
    assert abs(ent_fast.item() - ent_slow.item()) < 1e-9
    for name, p in model.named_parameters():
        if name == "embedding.weight":  # the reference's tied output also trains the pad row
            assert torch.allclose(grads[name][1:], p.grad[1:], atol=1e-8)
        elif p.grad is not None:
            assert torch.allclose(grads[name], p.grad, atol=1e-8), name


@pytest.mark.parametrize("mask", ["causal", "none"])
def test_shared_sources_give_the_per_pair_loss_and_gradients(mask):
    """Encoding each distinct source once (pair_src) is the same computation
    as repeating the source for each of its pairs: same loss, same gradients."""
    torch.manual_seed(0)
    n = 15
    model = Regenerator(n, tiny_config(dropout=0.0, encoder_mask_train=mask)).double().train()
    rng = np.random.default_rng(3)
    sources = [rng.integers(1, n + 1, size=int(rng.integers(2, 12))).tolist() for _ in range(7)]
    pair_src, pats = [], []
    for i, row in enumerate(sources):
        for _ in range(int(rng.integers(1, 4))):  # 1-3 patterns per source
            keep = np.sort(rng.choice(len(row), size=int(rng.integers(1, min(4, len(row)) + 1)), replace=False))
            pair_src.append(i)
            pats.append([row[j] for j in keep])
    rows = Sequences.from_lists(sources)
    order = np.argsort(rows.lengths[pair_src], kind="stable")  # pairs sorted by source length
    pair_src = np.asarray(pair_src)[order]
    pats = [pats[j] for j in order]
    src, tgt = _batch(n, sources, pats, model.sos, model.eos)
    losses = []
    grads = []
    for shared in (True, False):
        model.zero_grad()
        torch.manual_seed(5)
        if shared:
            rec, ent = model.losses(src, tgt, 0.7, groups=3, pair_src=torch.from_numpy(pair_src))
        else:
            rec, ent = model.losses(src[torch.from_numpy(pair_src)], tgt, 0.7, groups=3)
        (rec + ent).backward()
        losses.append((rec.item(), ent.item()))
        grads.append({k: q.grad.clone() for k, q in model.named_parameters() if q.grad is not None})
    assert losses[0] == pytest.approx(losses[1], abs=1e-10)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-10), name


@pytest.mark.parametrize("share", [True, False])
def test_pair_batches_cover_every_pair_once_per_epoch(share):
    rng = np.random.default_rng(0)
    sources = [rng.integers(1, 30, size=int(rng.integers(2, 9))).tolist() for _ in range(40)]
    src_rows = [sources[int(i)] for i in rng.integers(0, 40, size=150)]  # sources repeat
    tgt_rows = [row[:2] for row in src_rows]
    batches = PairBatches(Sequences.from_lists(src_rows), Sequences.from_lists(tgt_rows), 31, 32, 16,
                          share, torch.device("cpu"))
    seen = []
    for src, tgt, pair_src in batches.epoch(np.random.default_rng(1)):
        assert len(tgt) <= 16
        full = src if pair_src is None else src[pair_src]
        assert len(full) == len(tgt)
        if pair_src is not None:  # each distinct source once, sorted by length
            assert len({tuple(r.tolist()) for r in src}) == len(src)
            assert torch.all((src != 0).sum(1).diff() >= 0)
        assert torch.all((full != 0).sum(1).diff() >= 0)
        for s_row, t_row in zip(full.tolist(), tgt.tolist(), strict=True):
            s_items = [x for x in s_row if 0 < x < 31]
            t_items = [x for x in t_row if 0 < x < 31]
            seen.append((tuple(s_items), tuple(t_items)))
    assert len(batches) == 10
    assert sorted(seen) == sorted((tuple(s), tuple(t)) for s, t in zip(src_rows, tgt_rows, strict=True))


def test_causal_and_bidirectional_encoders_differ():
    torch.manual_seed(0)
    model = Regenerator(12, tiny_config(dropout=0.0)).double().train()
    src, tgt = _batch(12, [[1, 2, 3, 4, 5]], [[2, 4]], model.sos, model.eos)
    torch.manual_seed(1)
    causal, _ = model.losses(src, tgt, 1.0)
    object.__setattr__(model.config, "encoder_mask_train", "none")
    torch.manual_seed(1)
    bidirectional, _ = model.losses(src, tgt, 1.0)
    assert abs(causal.item() - bidirectional.item()) > 1e-6


def test_dropout_mask_keeps_the_right_fraction():
    like = torch.empty(0)
    torch.manual_seed(0)
    half = dropout_mask((1000, 100), 0.5, like)
    assert set(half.unique().tolist()) == {0.0, 2.0}
    assert abs((half > 0).float().mean().item() - 0.5) < 0.01
    tenth = dropout_mask((1000, 100), 0.1, like)
    assert abs((tenth > 0).float().mean().item() - 0.9) < 0.01
    assert torch.allclose(tenth[tenth > 0], torch.tensor(1 / 0.9))
    torch.manual_seed(0)
    assert torch.equal(dropout_mask((1000, 100), 0.5, like), half)  # seeded like torch's RNG


def test_native_dropout_switch_keeps_the_loss_path():
    torch.manual_seed(0)
    model = Regenerator(12, tiny_config(dropout=0.5)).train()
    src, tgt = _batch(12, [[1, 2, 3, 4, 5], [6, 7]], [[2, 4], [7]], model.sos, model.eos)
    use_native_dropout(model)
    assert model.input_drop.native and model.encoder_layers[0].self_attn.native
    x = model.input_drop(torch.ones(200, 100))
    assert abs((x > 0).float().mean().item() - 0.5) < 0.02 and x.max().item() == 2.0
    fast, _ = model.losses(src, tgt, 1.0)
    slow, _ = model.losses(src, tgt, 1.0, reference=True)
    assert torch.isfinite(fast) and torch.isfinite(slow)
    use_native_dropout(model, False)
    assert not model.decoder_layers[1].drop.native


def test_check_pairs_names_the_problem():
    ok = Sequences.from_lists([[1, 2, 3]])
    with pytest.raises(RegeneratorInputError, match="does not occur in its source"):
        check_pairs(ok, Sequences.from_lists([[1, 4]]), 5, 50)
    with pytest.raises(RegeneratorInputError, match="outside 1..2"):
        check_pairs(ok, Sequences.from_lists([[1]]), 2, 50)
    with pytest.raises(RegeneratorInputError, match="position table"):
        check_pairs(Sequences.from_lists([list(range(1, 50))]), Sequences.from_lists([[1]]), 60, 50)
    with pytest.raises(RegeneratorInputError, match="no .* pairs"):
        check_pairs(Sequences.empty(), Sequences.empty(), 5, 50)
    with pytest.raises(RegeneratorInputError, match="2 sources but 1 targets"):
        check_pairs(Sequences.from_lists([[1], [2]]), Sequences.from_lists([[1]]), 5, 50)


def test_item_embeddings_seed_the_table():
    torch.manual_seed(0)
    table = torch.randn(11, 32)
    model = Regenerator(10, tiny_config(), item_embeddings=table)
    weight = model.embedding.weight.detach()
    assert torch.equal(weight[1:11], table[1:])
    assert torch.count_nonzero(weight[0]) == 0  # padding row
    assert weight[11:].std() < 0.1  # SOS/EOS rows drawn from N(0, 0.02^2)
    with pytest.raises(RegeneratorInputError, match="shape"):
        Regenerator(10, tiny_config(), item_embeddings=torch.randn(10, 32))


def test_training_learns_is_seeded_and_leaves_global_rng_alone(planted, trained):
    model, config = trained
    assert not model.training
    assert torch.count_nonzero(model.embedding.weight[0]) == 0  # pad row never learns
    src, tgt = wrap_tokens(planted.src, model.sos, model.eos)[0], wrap_tokens(planted.tgt, model.sos,
                                                                               model.eos)[0]
    fresh = Regenerator(planted.num_items, config)
    fresh.train(), model.train()
    with torch.no_grad():
        torch.manual_seed(0)
        before, _ = fresh.losses(torch.from_numpy(src), torch.from_numpy(tgt), 0.1)
        torch.manual_seed(0)
        after, _ = model.losses(torch.from_numpy(src), torch.from_numpy(tgt), 0.1)
    model.eval()
    assert after.item() < 0.5 * before.item()

    small = make_planted(num_users=12)
    short = tiny_config(epochs=2)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a = train_regenerator(small.src, small.tgt, small.num_items, short)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = train_regenerator(small.src, small.tgt, small.num_items, short)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name


def test_progress_events_and_epoch_schedule():
    small = make_planted(num_users=12)
    events = []
    config = tiny_config(epochs=3, lr_schedule_per="epoch")
    train_regenerator(small.src, small.tgt, small.num_items, config, progress=events.append)
    per_epoch = -(-len(small.src) // config.batch_size)
    assert [e.done for e in events] == list(range(1, 3 * per_epoch + 1))
    assert all(e.total == 3 * per_epoch and e.stage == "regenerator" for e in events)
    lrs = [e.metrics["lr"] for e in events]
    assert len(set(lrs[:per_epoch])) == 1 and lrs[per_epoch] < lrs[0]  # constant within an epoch
    assert events[-1].metrics["tau"] == pytest.approx(0.995 ** (3 * per_epoch))


def test_save_and_load_round_trip(tmp_path, trained):
    model, config = trained
    save_regenerator(model, tmp_path / "reg")
    assert {p.name for p in (tmp_path / "reg").iterdir()} == {"regenerator.safetensors", "regenerator.json"}
    loaded = load_regenerator(tmp_path / "reg")
    assert loaded.config == config and loaded.num_items == model.num_items and not loaded.training
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(RegeneratorInputError, match="no regenerator checkpoint"):
        load_regenerator(tmp_path / "missing")


def test_planted_pairs_are_valid(planted):
    check_pairs(planted.src, planted.tgt, planted.num_items, 50)
    assert {tuple(t) for t in planted.tgt.to_lists()} == set(PLANTED)
