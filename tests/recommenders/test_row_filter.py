"""``TrainConfig.row_filter='loss'``: a scorer trained on the original rows
ranks the regenerated rows by their cross-entropy; the lowest share is kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from models.config import TrainConfig, TrainJobConfig
from models.data.sequences import RowSource, Sequences, TrainRows
from models.data.split import leave_one_out
from models.progress import Cancelled
from models.recommenders import build_model
from models.training import TrainingError, train_model
from models.training_filter import Scorer, keep_lowest, keep_random, row_losses

N = 30


def _chain(start: int, length: int) -> list[int]:
    return [(start + j - 1) % N + 1 for j in range(length)]


def _data():
    """Users walk a chain i -> i+1. The regenerated rows are 150 chain pairs
    (what the data says) followed by 150 random pairs (noise)."""
    rng = np.random.default_rng(0)
    users = [_chain(int(rng.integers(1, N + 1)), int(rng.integers(6, 12))) for _ in range(150)]
    split = leave_one_out(Sequences.from_lists(users), max_len=12)
    plausible = [_chain(int(rng.integers(1, N + 1)), 2) for _ in range(150)]
    noise = []
    while len(noise) < 150:
        a, b = (int(x) for x in rng.integers(1, N + 1, size=2))
        if b != a % N + 1:  # not a chain step
            noise.append([a, b])
    regen = TrainRows.build(Sequences.from_lists(plausible + noise), RowSource.REGENERATED)
    pattern = TrainRows.build(Sequences.from_lists([_chain(5, 3), _chain(9, 3)]), RowSource.PATTERN)
    return split, split.train.concat(pattern).concat(regen)


def _config(**kw) -> TrainConfig:
    return TrainConfig(model="sasrec", model_overrides={"ffn_size": 16}, epochs=8, patience=3, batch_size=64,
                       max_len=12, device="cpu", num_threads=1, seed=3, **kw)


@pytest.mark.parametrize("model", ["sasrec", "fmlp", "gru4rec"])
def test_row_losses_are_each_rows_mean_full_softmax_cross_entropy(model):
    torch.manual_seed(0)
    net = build_model(model, N, {"max_len": 8, "embed_dim": 16})
    net.train()  # scoring must switch dropout off and restore the mode
    rows = TrainRows.build(Sequences.from_lists([[1, 2, 3, 4], [5, 9], [7, 7, 8], [3, 1, 2, 6, 4, 10]]),
                           RowSource.REGENERATED)
    got = row_losses(net, rows)
    assert net.training
    net.eval()
    table = net.item_embeddings().detach()
    expected = []
    with torch.no_grad():
        for seq in rows.seqs.to_lists():
            losses = []
            for t in range(1, len(seq)):  # every prefix predicts its next item
                prefix = TrainRows.build(Sequences.from_lists([seq[: t + 1]]), RowSource.ORIGINAL)
                tr = net.batch_transform()
                ex = tr.examples(prefix)
                batch = tr.collate(prefix, ex, np.arange(len(ex)))
                h = net(batch)
                last = h[-1, -1] if batch.left_padded else h[0, t - 1]  # FMLP: the longest prefix
                logits = table @ last
                logits[0] = float("-inf")
                losses.append(F.cross_entropy(logits[None], torch.tensor([seq[t]])).item())
            expected.append(np.mean(losses))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_keep_lowest_takes_the_lowest_share_and_breaks_ties_by_row():
    losses = np.array([3.0, 1.0, 2.0, 1.0, 5.0])
    assert keep_lowest(losses, 0.4).tolist() == [1, 3]
    assert keep_lowest(losses, 0.5).tolist() == [1, 2, 3]  # ceil(2.5)
    assert keep_lowest(losses, 0.2).tolist() == [1]  # tie: the earlier row
    assert keep_lowest(losses, 1e-6).tolist() == [1]  # at least one
    assert keep_lowest(losses, 1.0).tolist() == [0, 1, 2, 3, 4]
    assert keep_lowest(np.zeros(0), 0.5).tolist() == []


def _training_rows_seen(monkeypatch) -> list[TrainRows]:
    """The rows of every training run from here on (the trainer's inner loop, spied on)."""
    import models.training as training

    seen: list[TrainRows] = []
    real = training._train

    def spy(train, *args, **kwargs):
        seen.append(train)
        return real(train, *args, **kwargs)

    monkeypatch.setattr(training, "_train", spy)
    return seen


def test_the_filter_keeps_plausible_rows_and_trains_on_them(monkeypatch):
    split, rows = _data()
    seen = _training_rows_seen(monkeypatch)
    result = train_model(rows, split.valid, split.test, N, _config(row_filter="loss", row_filter_keep=0.5))
    scorer_rows, final_rows = seen
    # the scorer saw the original rows only, and is the plain original run
    assert set(np.unique(scorer_rows.source)) == {int(RowSource.ORIGINAL)}
    monkeypatch.undo()  # the plain trainer again
    original = train_model(split.train, split.valid, split.test, N, _config())
    assert result.row_filter["scorer"]["valid"] == original.valid_metrics
    # the final run kept every original and pattern row and half the regenerated ones
    counts = {s: int((final_rows.source == s).sum()) for s in (0, 1, 2)}
    assert counts == {0: len(split.train), 1: 2, 2: 150}
    f = result.row_filter
    assert f["regenerated_rows"] == 300 and f["kept_rows"] == 150 and f["training_rows"] == len(final_rows)
    assert f["loss_kept"]["max"] <= f["loss_dropped"]["min"] and f["threshold"] == f["loss_kept"]["max"]
    # the oracle: a scorer of chain walks keeps chain steps, not the random pairs
    kept = final_rows.seqs.to_lists()[-150:]
    chain_share = np.mean([b == a % N + 1 for a, b in kept])
    assert chain_share > 0.8, chain_share
    assert result.seconds > f["scorer"]["seconds"]


def test_the_filter_changes_nothing_without_regenerated_rows():
    split, _ = _data()
    plain = train_model(split.train, split.valid, split.test, N, _config())
    filtered = train_model(split.train, split.valid, split.test, N, _config(row_filter="loss"))
    assert filtered.row_filter is None
    assert filtered.test_metrics == plain.test_metrics and filtered.epochs_run == plain.epochs_run


def test_the_filter_resumes_inside_either_run(tmp_path):
    split, rows = _data()
    cfg = _config(row_filter="loss")
    full = train_model(rows, split.valid, split.test, N, cfg)

    def stop_in_final_run(event):
        if event.stage == "train" and event.epoch == 1:  # the final run's second epoch (the scorer's is scorer:train)
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        train_model(rows, split.valid, split.test, N, cfg, stop_in_final_run, checkpoint_dir=tmp_path)
    assert (tmp_path / "scorer").is_dir()
    resumed = train_model(rows, split.valid, split.test, N, cfg, checkpoint_dir=tmp_path, resume=True)
    def _timeless(f):
        return {**f, "scorer": {k: v for k, v in f["scorer"].items() if k != "seconds"}}

    assert _timeless(resumed.row_filter) == _timeless(full.row_filter)
    assert resumed.test_metrics == pytest.approx(full.test_metrics)


def test_a_reused_original_arm_filters_exactly_as_the_scorer_it_would_train():
    """A comparison hands its original arm in as the scorer: the same rows are
    kept and the same model trained, without training the original twice."""
    split, rows = _data()
    cfg = _config(row_filter="loss", row_filter_keep=0.5)
    trained = train_model(rows, split.valid, split.test, N, cfg)
    original = train_model(split.train, split.valid, split.test, N, _config())
    stages = []
    reused = train_model(rows, split.valid, split.test, N, cfg, lambda e: stages.append(e.stage),
                         scorer=Scorer(original.model, {"from": "test"}))
    assert not any(s.startswith("scorer:") for s in stages)  # no scorer epochs
    assert reused.row_filter["scorer"] == {"reused": True, "from": "test"}
    same = {k: v for k, v in reused.row_filter.items() if k != "scorer"}
    assert same == {k: v for k, v in trained.row_filter.items() if k != "scorer"}
    assert reused.test_metrics == pytest.approx(trained.test_metrics)
    assert trained.row_filter["scorer"]["reused"] is False


def test_a_scorer_of_another_kind_shape_or_catalogue_is_refused():
    split, rows = _data()
    cfg = _config(row_filter="loss")
    good = {"ffn_size": 16, "max_len": 12}
    for name, n, overrides, message in (("gru4rec", N, {"max_len": 12}, "is a gru4rec model"),
                                        ("sasrec", N + 1, good, "knows 31 items"),
                                        ("sasrec", N, {**good, "embed_dim": 32}, "was built with")):
        scorer = Scorer(build_model(name, n, overrides), {})
        with pytest.raises(TrainingError, match=message):
            train_model(rows, split.valid, split.test, N, cfg, scorer=scorer)
    for plain in (_config(row_filter="none"), _config(loss="bce")):
        with pytest.raises(TrainingError, match="only used by the loss filter"):
            train_model(rows, split.valid, split.test, N, plain, scorer=Scorer(build_model("sasrec", N, good), {}))


def test_auto_filters_softmax_runs_on_regenerated_rows_and_nothing_else():
    """The default ('auto') runs the loss filter where the evidence is (the
    softmax losses) and where it can run: not with BCE, finetune, several
    processes or DR4SR+."""
    split, rows = _data()
    auto = train_model(rows, split.valid, split.test, N, _config())
    explicit = train_model(rows, split.valid, split.test, N, _config(row_filter="loss"))
    assert TrainConfig().row_filter == "auto" and auto.row_filter is not None
    def timeless(f):
        return {**f, "scorer": {k: v for k, v in f["scorer"].items() if k != "seconds"}}

    assert timeless(auto.row_filter) == timeless(explicit.row_filter)
    assert auto.test_metrics == pytest.approx(explicit.test_metrics)
    assert train_model(rows, split.valid, split.test, N, _config(loss="bce")).row_filter is None
    finetuned = train_model(rows, split.valid, split.test, N, _config(finetune="original"))
    assert finetuned.finetune is not None and finetuned.row_filter is None
    assert not _config(finetune="original").runs_loss_filter() and not _config(world_size=2).runs_loss_filter()
    assert _config(loss="ce").runs_loss_filter() and not _config().runs_loss_filter(personalized=True)
    assert not _config(row_filter="none").runs_loss_filter() and _config(row_filter="loss", loss="bce").runs_loss_filter()
    TrainJobConfig(personalize=True, world_size=1)  # auto never refuses DR4SR+


@pytest.mark.parametrize("by", ["loss", "random"])
def test_the_filter_rejects_what_it_cannot_do(by):
    with pytest.raises(ValidationError, match="world_size must be 1"):
        TrainConfig(row_filter=by, world_size=2)
    with pytest.raises(ValidationError, match="does not combine with finetune"):
        TrainConfig(row_filter=by, finetune="original")
    with pytest.raises(ValidationError, match="does not combine with DR4SR"):
        TrainJobConfig(row_filter=by, personalize=True)
    with pytest.raises(ValidationError, match="row_filter_keep"):
        TrainConfig(row_filter="loss", row_filter_keep=0.0)


def test_keep_random_draws_the_loss_filters_count_by_seed():
    first = keep_random(300, 0.25, seed=3)
    assert len(first) == 75 and len(set(first.tolist())) == 75  # ceil(0.25 * 300), no row twice
    assert first.tolist() == sorted(first.tolist()) and 0 <= first.min() and first.max() < 300
    assert keep_random(300, 0.25, seed=3).tolist() == first.tolist()  # the seed decides
    assert keep_random(300, 0.25, seed=4).tolist() != first.tolist()
    assert len(keep_random(5, 1e-6, seed=0)) == 1 and keep_random(5, 1.0, seed=0).tolist() == [0, 1, 2, 3, 4]
    assert keep_random(0, 0.5, seed=0).tolist() == []
    # uniform: over many draws every row is kept about a quarter of the time
    counts = np.zeros(40)
    for seed in range(2000):
        counts[keep_random(40, 0.25, seed)] += 1
    assert np.all(np.abs(counts / 2000 - 0.25) < 0.05), counts / 2000


def test_the_random_control_keeps_the_same_share_without_a_scorer(monkeypatch):
    """'random' trains once (no scorer) on every original and pattern row and a
    seeded uniform draw of the loss filter's count of regenerated rows, so the
    chain steps among the kept rows stay near their share of all the rows
    (the loss filter's oracle test above keeps more than 80 %)."""
    split, rows = _data()
    seen = _training_rows_seen(monkeypatch)
    stages = []
    result = train_model(rows, split.valid, split.test, N, _config(row_filter="random", row_filter_keep=0.5),
                         lambda e: stages.append(e.stage))
    assert len(seen) == 1 and not any(s.startswith("scorer:") for s in stages)
    (final_rows,) = seen
    counts = {s: int((final_rows.source == s).sum()) for s in (0, 1, 2)}
    assert counts == {0: len(split.train), 1: 2, 2: 150}
    f = result.row_filter
    assert f == {"by": "random", "keep": 0.5, "regenerated_rows": 300, "kept_rows": 150,
                 "training_rows": len(final_rows)}
    kept = final_rows.seqs.to_lists()[-150:]
    chain_share = np.mean([b == a % N + 1 for a, b in kept])
    assert 0.3 < chain_share < 0.7, chain_share  # half the regenerated rows are chain steps
    drawn = rows.take(np.flatnonzero(rows.source == int(RowSource.REGENERATED))).seqs.to_lists()
    assert kept == [drawn[i] for i in keep_random(300, 0.5, seed=3)]  # the run's seed draws them
    with pytest.raises(TrainingError, match="only used by the loss filter"):
        train_model(rows, split.valid, split.test, N, _config(row_filter="random"),
                    scorer=Scorer(build_model("sasrec", N, {"ffn_size": 16, "max_len": 12}), {}))


def test_resolved_row_filter_names_what_runs():
    assert _config().resolved_row_filter() == "loss" and _config(loss="bce").resolved_row_filter() == "none"
    assert _config().resolved_row_filter(personalized=True) == "none"
    assert _config(row_filter="random").resolved_row_filter() == "random"
    assert not _config(row_filter="random").runs_loss_filter()
