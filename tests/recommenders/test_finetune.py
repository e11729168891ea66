"""``TrainConfig.finetune='original'``: a second phase on the original rows,
started from the first phase's best weights, kept only when it validates better."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from models.config import TrainConfig, TrainJobConfig
from models.data.sequences import RowSource, Sequences, TrainRows
from models.data.split import leave_one_out
from models.progress import Cancelled
from models.training import TrainingError, train_model

N = 30


def _data():
    """Users walk a chain i -> i+1; the synthetic rows are random pairs (noise)."""
    rng = np.random.default_rng(0)
    users = []
    for _ in range(120):
        start, length = int(rng.integers(1, N + 1)), int(rng.integers(6, 12))
        users.append([(start + j - 1) % N + 1 for j in range(length)])
    split = leave_one_out(Sequences.from_lists(users), max_len=12)
    noise = TrainRows.build(Sequences.from_lists([list(rng.integers(1, N + 1, size=2)) for _ in range(300)]),
                            RowSource.REGENERATED)
    return split, split.train.concat(noise)


def _config(**kw) -> TrainConfig:
    # the plain run each phase is compared with: no loss filter (finetune never runs one)
    kw.setdefault("row_filter", "none")
    return TrainConfig(model="sasrec", model_overrides={"ffn_size": 16}, epochs=4, patience=2, batch_size=64,
                       max_len=12, device="cpu", num_threads=1, seed=3, **kw)


def test_finetune_trains_a_second_phase_on_original_rows_from_the_best_weights(monkeypatch):
    split, rows = _data()
    import models.training as training

    calls = []
    real = training._train

    def spy(train, *args, **kwargs):
        calls.append(np.unique(train.source).tolist())
        return real(train, *args, **kwargs)

    monkeypatch.setattr(training, "_train", spy)
    plain = train_model(rows, split.valid, split.test, N, _config())
    calls.clear()
    result = train_model(rows, split.valid, split.test, N, _config(finetune="original"))
    assert calls == [[int(RowSource.ORIGINAL), int(RowSource.REGENERATED)], [int(RowSource.ORIGINAL)]]
    ft = result.finetune
    # phase one is exactly the plain run
    assert ft["all_rows"]["valid"] == plain.valid_metrics
    assert ft["all_rows"]["epochs_run"] == plain.epochs_run
    assert ft["finetune"]["rows"] == len(split.train)
    assert result.epochs_run == plain.epochs_run + ft["finetune"]["epochs_run"]
    assert len(result.history) == result.epochs_run
    assert [h.get("phase") for h in result.history[plain.epochs_run:]] == ["finetune"] * ft["finetune"]["epochs_run"]
    # the kept phase is the better one on validation, and the result is that phase's
    a, b = ft["all_rows"]["valid"]["ndcg@20"], ft["finetune"]["valid"]["ndcg@20"]
    assert ft["kept"] == ("finetune" if b >= a else "all_rows")
    assert result.valid_metrics["ndcg@20"] == max(a, b)
    if ft["kept"] == "all_rows":
        assert result.test_metrics == plain.test_metrics


def test_finetune_starts_from_the_first_phase_weights(monkeypatch):
    split, rows = _data()
    import models.training as training

    seen = {}
    real = training.train_model  # the phases look it up in models.training at call time

    def spy(train, valid, test, num_items, config, progress, ckpt, resume, hook, *rest):
        if hook is not None and len(np.unique(train.source)) == 1:  # the second phase
            model = torch.nn.Module()
            loaded = {}
            model.load_state_dict = lambda state: loaded.update(state)
            hook(model)
            seen["state"] = loaded
        return real(train, valid, test, num_items, config, progress, ckpt, resume, hook, *rest)

    monkeypatch.setattr(training, "train_model", spy)
    plain = real(rows, split.valid, split.test, N, _config())
    real(rows, split.valid, split.test, N, _config(finetune="original"))
    for k, v in plain.model.state_dict().items():
        assert torch.equal(seen["state"][k].cpu(), v.cpu()), k


def test_finetune_changes_nothing_on_original_rows():
    split, _ = _data()
    plain = train_model(split.train, split.valid, split.test, N, _config())
    ft = train_model(split.train, split.valid, split.test, N, _config(finetune="original"))
    assert ft.finetune is None and ft.test_metrics == plain.test_metrics and ft.epochs_run == plain.epochs_run


def test_finetune_resumes_inside_either_phase(tmp_path):
    split, rows = _data()
    cfg = _config(finetune="original")
    full = train_model(rows, split.valid, split.test, N, cfg)
    first_epochs = full.finetune["all_rows"]["epochs_run"]

    def stop_in_phase_two(event):
        # phase two's second epoch starts: its first is checkpointed (it runs >= patience epochs)
        if event.stage == "train" and event.epoch == first_epochs + 1:
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        train_model(rows, split.valid, split.test, N, cfg, stop_in_phase_two, checkpoint_dir=tmp_path)
    assert (tmp_path / "finetune").is_dir()
    resumed = train_model(rows, split.valid, split.test, N, cfg, checkpoint_dir=tmp_path, resume=True)
    assert resumed.finetune == full.finetune
    assert resumed.test_metrics == pytest.approx(full.test_metrics)


def test_finetune_rejects_what_it_cannot_do():
    with pytest.raises(ValidationError, match="world_size must be 1"):
        TrainConfig(finetune="original", world_size=2)
    with pytest.raises(ValidationError, match="does not combine with DR4SR"):
        TrainJobConfig(finetune="original", personalize=True)
    with pytest.raises(ValidationError, match="finetune"):
        TrainConfig(finetune="patterns")
    split, rows = _data()
    with pytest.raises(TrainingError, match="custom loss"):
        train_model(rows, split.valid, split.test, N, _config(finetune="original"),
                    loss_fn=lambda model, batch, step, epoch, positions: model.training_loss(batch, "bce"))
