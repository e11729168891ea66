"""DR4SR+ end to end through the shared trainer, on tiny synthetic data (CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.batching import AllPositions, PrefixExpansion
from models.data.sequences import EvalRows, RowSource, Sequences
from models.personalizer import (
    PersonalizedObjective,
    Personalizer,
    PersonalizerConfig,
    PersonalizerConfigError,
    collect_weights,
    double_backward_safe,
    heldout_batch,
    train_personalized,
)
from models.recommenders import build_model
from models.training import TrainConfig, load_model, save_checkpoint

NUM_ITEMS = 40  # the catalogue of conftest.chain_sequences

# small widths keep the double backward cheap; behaviour does not depend on them
SMALL = {
    "sasrec": {"ffn_size": 32},
    "gru4rec": {"rnn_size": 32, "layer_num": 1},
    "fmlp": {},
    "gnn": {"ffn_size": 32},
    "cl4srec": {"ffn_size": 32},
}


def _train_config(model: str, epochs: int, **kw) -> TrainConfig:
    return TrainConfig(
        model=model,
        model_overrides=SMALL[model],
        epochs=epochs,
        batch_size=32,
        max_len=20,
        patience=100,
        device="cpu",
        eval_batch=256,
        num_threads=1,  # the test machine is small and shared
        **kw,
    )


def _weights_of(result, state: str, rows, codes):
    p = Personalizer(result.model.hidden_size, learn_tau=bool(result.personalizer_config["learn_tau"]))
    p.load_state_dict(result.personalizer_states[state])
    return collect_weights(result.model, p, rows, codes)


@pytest.mark.parametrize("model", ["sasrec", "gru4rec", "fmlp", "gnn", "cl4srec"])
def test_dr4sr_plus_trains_every_model(tiny, model, tmp_path):
    split, rows = tiny
    assert int(rows.seqs.items.max()) == NUM_ITEMS
    # GRU4Rec's early query vectors are ~100x smaller than the attention models', and so
    # are its hypergradients: a larger meta step makes 3 epochs enough to see φ move
    meta_lr = 2.0 if model == "gru4rec" else 0.02
    cfg = PersonalizerConfig.parity(warmup_epochs=0, interval=3, tau_init=2.0, meta_lr=meta_lr)
    result = train_personalized(rows, split.valid, split.test, NUM_ITEMS, _train_config(model, 3), cfg)

    assert result.meta["meta_steps"] > 0
    assert np.isfinite(result.meta["hypergradient_norm"])
    assert set(result.test_metrics) >= {"ndcg@20", "recall@10"}
    w = result.weights
    assert set(w) == {"original", "pattern", "regenerated"}
    assert w["pattern"]["mean"] == 1.0 and not w["pattern"]["weighted"]  # Q14 parity
    for source in ("original", "regenerated"):
        assert w[source]["weighted"]
        assert 0.2 < w[source]["mean"] < 0.8  # no collapse
        assert sum(w[source]["counts"]) == w[source]["positions"]
    # the learned weights moved away from the initial personalizer's (≈0.5 everywhere);
    # φ of the last epoch, since early stopping may keep an epoch before the first meta step
    final, src = _weights_of(result, "final", rows, cfg.weighted_codes)
    initial, _ = _weights_of(result, "initial", rows, cfg.weighted_codes)
    personalised = src != int(RowSource.PATTERN)
    assert np.abs(final - initial)[personalised].max() > 1e-5  # float32 noise is ~1e-7
    states = result.personalizer_states
    moved = sum(float((states["final"][k] - states["initial"][k]).norm()) for k in states["initial"])
    assert moved > 1e-2 * sum(float(v.norm()) for v in states["initial"].values())
    assert float(result.personalizer.tau) == cfg.tau_init  # parity: τ never gets a gradient (Q15)
    # the returned model is a plain recommender again: it saves and loads like any other
    assert not hasattr(result.model, "personalizer")
    loaded = load_model(save_checkpoint(result.model, tmp_path / "ckpt"))
    for (k, a), (_, b) in zip(result.model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a.cpu(), b.cpu()), k


def test_end_to_end_ablation_collapses_while_bilevel_does_not(tiny):
    split, rows = tiny
    means = {}
    # τ = 1 and a larger learning rate make the collapse fast enough for a unit test;
    # both runs share every setting but the mode
    for mode in ("bilevel", "end_to_end"):
        cfg = PersonalizerConfig.parity(warmup_epochs=0, interval=2, tau_init=1.0, mode=mode)
        tc = _train_config("sasrec", 4, lr=5e-3)
        result = train_personalized(rows, split.valid, split.test, NUM_ITEMS, tc, cfg)
        trajectory = result.meta["epoch_weight_mean"]
        assert [e for e, _ in trajectory] == [1, 2, 3]  # epoch 0 is the warm-up
        means[mode] = trajectory[-1][1]
    assert means["end_to_end"] < 0.1
    assert means["bilevel"] > 0.4
    assert means["bilevel"] - means["end_to_end"] > 0.3


def test_fixed_profile_heldout_dev_learnable_tau_regenerated_only(tiny):
    split, rows = tiny
    cfg = PersonalizerConfig.fixed(warmup_epochs=0, interval=2, meta_lr=0.05)
    result = train_personalized(rows, split.valid, split.test, NUM_ITEMS, _train_config("sasrec", 3), cfg)
    w = result.weights
    assert w["original"]["mean"] == 1.0 and not w["original"]["weighted"]
    assert w["pattern"]["mean"] == 1.0
    # normalised (the fixed profile): regenerated rows' weights average 1 and differ
    assert w["regenerated"]["weighted"] and w["regenerated"]["mean"] == pytest.approx(1.0, abs=1e-4)
    assert w["regenerated"]["std"] > 0
    assert result.meta["meta_steps"] > 0
    tau = float(result.personalizer.tau)
    assert tau != cfg.tau_init and tau >= cfg.tau_min  # τ got a hypergradient (Q15 fixed)


def test_meta_step_schedule_counts_warmup_steps(tiny):
    split, rows = tiny
    tc = _train_config("sasrec", 3, bucket_chunk=0)
    per_epoch = -(-len(rows) // tc.batch_size)
    cfg = PersonalizerConfig.parity(warmup_epochs=1, interval=4)
    result = train_personalized(rows, split.valid, split.test, NUM_ITEMS, tc, cfg)
    # weighting only in epoch index 2 (> warmup_epochs); the counter runs from the first step
    steps = np.arange(1, 3 * per_epoch + 1)
    expected = int(((steps % 4 == 0) & ((steps - 1) // per_epoch > 1)).sum())
    assert result.meta["meta_steps"] == expected > 0
    assert [e for e, _ in result.meta["epoch_weight_mean"]] == [2]


def test_phi_moves_only_through_meta_steps_in_bilevel(tiny):
    split, rows = tiny
    # interval beyond the run: weighting is on but no meta step ever happens
    cfg = PersonalizerConfig.parity(warmup_epochs=0, interval=10_000)
    result = train_personalized(rows, split.valid, split.test, NUM_ITEMS, _train_config("sasrec", 2), cfg)
    assert result.meta["meta_steps"] == 0
    for k, v in result.personalizer.state_dict().items():
        assert torch.equal(v, result.personalizer_states["initial"][k]), k
        assert torch.equal(v, result.personalizer_states["final"][k]), k


def _full_and_resumed(split, rows, cfg, checkpoint_dir):
    """A 3-epoch run, and the same run stopped after 2 epochs then resumed to 3."""
    full = train_personalized(rows, split.valid, split.test, NUM_ITEMS, _train_config("sasrec", 3), cfg)
    train_personalized(
        rows, split.valid, split.test, NUM_ITEMS, _train_config("sasrec", 2), cfg, checkpoint_dir=checkpoint_dir
    )
    resumed = train_personalized(
        rows, split.valid, split.test, NUM_ITEMS, _train_config("sasrec", 3), cfg,
        checkpoint_dir=checkpoint_dir, resume=True,
    )
    return full, resumed


def test_resume_continues_like_an_uninterrupted_run(tiny, tmp_path):
    split, rows = tiny
    cfg = PersonalizerConfig.parity(warmup_epochs=0, interval=2, meta_lr=0.05)
    full, resumed = _full_and_resumed(split, rows, cfg, tmp_path)
    assert resumed.meta["meta_steps"] == full.meta["meta_steps"]
    assert np.allclose(resumed.meta["epoch_weight_mean"], full.meta["epoch_weight_mean"])
    for k, v in full.personalizer.state_dict().items():
        assert torch.allclose(v, resumed.personalizer.state_dict()[k], atol=1e-6), k


def test_no_weighted_rows_is_a_clear_error(tiny):
    split, _ = tiny
    with pytest.raises(PersonalizerConfigError, match="no training row comes from a weighted source"):
        train_personalized(
            split.train, split.valid, split.test, NUM_ITEMS, _train_config("sasrec", 1), PersonalizerConfig.fixed()
        )


def test_heldout_needs_dev_rows(tiny):
    _, rows = tiny
    with pytest.raises(PersonalizerConfigError, match="heldout"):
        PersonalizedObjective(PersonalizerConfig.fixed(), rows, 32, 0, dev=None)


def test_heldout_batch_uses_only_the_validation_target():
    history = Sequences.from_lists([[1, 2, 3], [4, 5], [6]])
    rows = EvalRows(history, np.array([7, 8, 9]), np.array([1, 2, 3]))
    b = heldout_batch(rows, np.array([0, 1, 2]), AllPositions(max_len=20))
    assert b.input.tolist() == [[1, 2, 3], [4, 5, 0], [6, 0, 0]]
    assert b.target.tolist() == [[0, 0, 7], [0, 8, 0], [9, 0, 0]]
    assert b.valid.sum() == 3
    f = heldout_batch(rows, np.array([1]), PrefixExpansion(max_len=4))
    assert f.input.tolist() == [[0, 0, 4, 5]] and f.target.tolist() == [[8]]


def test_heldout_dev_never_sees_test_items(tiny):
    split, rows = tiny
    model = build_model("sasrec", NUM_ITEMS, {"max_len": 20, **SMALL["sasrec"]}, train=rows)
    obj = PersonalizedObjective(PersonalizerConfig.fixed(), rows, 16, 0, dev=split.valid)
    obj.attach(model)
    seen = set()
    for _ in range(2 * -(-len(split.valid) // 16)):
        b = obj._dev_stream.next()
        for i, r in enumerate(b.row.tolist()):
            n = int(b.lengths[i])
            assert int(b.valid[i].sum()) == 1 and int(b.target[i, n - 1]) == split.valid.target[r]
            # input + dev target is exactly the test history: the test target never enters
            assert b.input[i, :n].tolist() + [int(b.target[i, n - 1])] == split.test.history[r].tolist()
            seen.add(r)
    assert seen == set(range(len(split.valid)))  # the persistent stream cycles through every row


def test_double_backward_safe_is_a_no_op_on_cpu():
    model = build_model("gru4rec", NUM_ITEMS, {"rnn_size": 8, "layer_num": 1})
    before = torch.backends.cudnn.enabled
    with double_backward_safe(model, torch.device("cpu")):
        assert torch.backends.cudnn.enabled == before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_double_backward_safe_disables_cudnn_for_rnns_on_cuda():
    model = build_model("gru4rec", NUM_ITEMS, {"rnn_size": 8, "layer_num": 1})
    with double_backward_safe(model, torch.device("cuda")):
        assert not torch.backends.cudnn.enabled
    assert torch.backends.cudnn.enabled


def test_heldout_dev_and_model_selection_use_disjoint_users(tiny, monkeypatch):
    """The fixed profile's meta-objective and early stopping never share a split."""
    import models.personalizer as personalizer_module

    split, rows = tiny
    seen = {}
    real_train_model = personalizer_module.train_model

    def spy(train, valid, test, *args, **kw):
        seen["selection"] = valid
        seen["test"] = test
        seen["dev"] = kw["loss_fn"].dev
        return real_train_model(train, valid, test, *args, **kw)

    monkeypatch.setattr(personalizer_module, "train_model", spy)
    cfg = PersonalizerConfig.fixed(warmup_epochs=0, interval=2)
    train_personalized(rows, split.valid, split.test, NUM_ITEMS, _train_config("sasrec", 1), cfg)
    dev_users = set(seen["dev"].user.tolist())
    selection_users = set(seen["selection"].user.tolist())
    assert dev_users and selection_users and not dev_users & selection_users
    assert dev_users | selection_users == set(split.valid.user.tolist())
    assert len(seen["test"]) == len(split.test)  # test keeps every user, untouched
    # each half keeps the validation rows' own targets
    by_user = dict(zip(split.valid.user.tolist(), split.valid.target.tolist(), strict=True))
    assert all(by_user[u] == t for u, t in zip(seen["dev"].user.tolist(), seen["dev"].target.tolist(), strict=True))


def test_epoch_loss_scale_reaches_the_weighted_loss(tiny, monkeypatch):
    """loss_scale='epoch': the trainer hands the epoch's mean positions per batch
    to the personalizer's weighted loss, which divides by it (not by the batch's
    own positions), in the warm-up and in the weighted epochs."""
    import models.personalizer.objective as objective_module
    from models.personalizer.weights import weighted_position_loss

    split, rows = tiny
    seen = []

    def spy(loss, valid, weights, positions=None):
        seen.append(positions)
        return weighted_position_loss(loss, valid, weights, positions)

    monkeypatch.setattr(objective_module, "weighted_position_loss", spy)
    cfg = PersonalizerConfig.parity(warmup_epochs=0, interval=3)
    tc = _train_config("sasrec", 2, loss_scale="epoch")
    result = train_personalized(rows, split.valid, split.test, NUM_ITEMS, tc, cfg)
    assert result.meta["meta_steps"] > 0 and np.isfinite(result.meta["hypergradient_norm"])
    examples = AllPositions(max_len=20).examples(rows)
    batches = -(-len(rows) // 32)
    expected = float(examples.input_lengths.sum()) / batches
    weighted = [p for p in seen if p is not None]
    assert weighted and all(p == pytest.approx(expected) for p in weighted)
    # the meta step's own losses keep the per-batch denominator (spec §7.2)
    assert None in seen

    loss = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    valid = torch.tensor([[True, True], [True, False]])
    w = torch.tensor([[0.5, 1.0], [1.0, 1.0]])
    assert float(weighted_position_loss(loss, valid, w)) == pytest.approx((0.5 + 2 + 3) / 3)
    assert float(weighted_position_loss(loss, valid, w, 10.0)) == pytest.approx((0.5 + 2 + 3) / 10)


def test_adam_and_normalised_weights_train_and_resume(tiny, tmp_path):
    split, rows = tiny
    cfg = PersonalizerConfig.fixed(warmup_epochs=0, interval=2, meta_optimizer="adam", meta_lr=0.01, normalize=True)
    full, resumed = _full_and_resumed(split, rows, cfg, tmp_path)
    assert full.meta["meta_steps"] > 0
    # normalised: the applied weights average 1 over every weighted epoch
    assert all(m == pytest.approx(1.0, abs=1e-4) for _, m in full.meta["epoch_weight_mean"])
    regen = full.weights["regenerated"]
    assert regen["mean"] == pytest.approx(1.0, abs=1e-4) and regen["std"] > 0
    assert resumed.meta["meta_steps"] == full.meta["meta_steps"]
    for k, v in full.personalizer.state_dict().items():  # Adam's moments came back with the checkpoint
        assert torch.allclose(v, resumed.personalizer.state_dict()[k], atol=1e-6), k


def test_adam_moves_the_weights_further_than_sgd_at_the_same_rate(tiny):
    split, rows = tiny
    spread = {}
    for opt in ("sgd", "adam"):
        cfg = PersonalizerConfig.fixed(warmup_epochs=0, interval=2, meta_optimizer=opt, meta_lr=1e-3)
        result = train_personalized(rows, split.valid, split.test, NUM_ITEMS, _train_config("sasrec", 2), cfg)
        moved = [
            float((result.personalizer_states["final"][k] - v).abs().max())
            for k, v in result.personalizer_states["initial"].items()
        ]
        spread[opt] = max(moved)
    assert spread["adam"] > 3 * spread["sgd"]
