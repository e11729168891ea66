"""Data-parallel training with torch.distributed (models/distributed.py, issue 15).

Two CPU processes (gloo) against one process with the same global batch, on
tiny synthetic data for a few steps. Dropout is 0 and SASRec uses the full
softmax, so no per-rank random draw separates the runs.

Tolerances: the first step's loss (same weights, same global batch) agrees to
1e-5 relative; later steps to 1e-2 absolute for the regenerator (Adam's
first steps divide by sqrt(v) + 1e-9, which turns float-rounding differences
of near-zero gradient entries into lr-sized steps) and 1e-4 for SASRec
(eps 1e-8), the SASRec run stopping after one epoch and resuming.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recommenders"))
from recsys_synthetic import planted_split  # noqa: E402

from models.config import RegeneratorConfig, TrainConfig  # noqa: E402
from models.data.sequences import Sequences  # noqa: E402
from models.regenerator import train_regenerator  # noqa: E402
from models.training import TrainingError, train_model  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _sasrec(world_size: int, epochs: int = 2, **kw) -> TrainConfig:
    return TrainConfig(model="sasrec", epochs=epochs, batch_size=32, loss="ce", patience=5, num_threads=1,
                       model_overrides={"dropout_rate": 0.0}, world_size=world_size, device="cpu", **kw)


def _train_losses(split, n, config, **kw):
    events = []
    result = train_model(split.train, split.valid, split.test, n, config,
                         progress=lambda e: events.append(e.metrics["loss"]) if e.stage == "train" else None, **kw)
    return result, np.array(events)


def test_sasrec_two_ranks_match_one_process_checkpoint_once_and_resume(tmp_path):
    split, n = planted_split(num_users=120, num_items=30)
    single, single_losses = _train_losses(split, n, _sasrec(1))
    assert len(single_losses) == 8  # 2 epochs x ceil(114 / 32) global batches

    # two ranks for one epoch, checkpointed ...
    ckpt = tmp_path / "ckpt"
    _, first = _train_losses(split, n, _sasrec(2, epochs=1), checkpoint_dir=ckpt)
    # ... written once, by rank 0: one tensor/JSON pair, no temporary left, and
    # the JSON names the writer and holds both ranks' RNG states
    assert sorted(p.name for p in ckpt.iterdir()) == ["last.json", "last.safetensors"]
    meta = json.loads((ckpt / "last.json").read_text())
    assert meta["distributed"] == {"world_size": 2, "written_by_rank": 0}
    assert len(meta["rng_ranks"]) == 2 and meta["run"]["epoch"] == 1

    # ... then resumed to two epochs: together, the single process's steps
    resumed, second = _train_losses(split, n, _sasrec(2), checkpoint_dir=ckpt, resume=True)
    ddp_losses = np.concatenate([first, second])
    assert len(first) == len(second) == 4
    assert ddp_losses[0] == pytest.approx(single_losses[0], rel=1e-5)
    np.testing.assert_allclose(ddp_losses, single_losses, atol=1e-4)
    assert resumed.epochs_run == 2 and len(resumed.history) == 2
    assert resumed.best_epoch == single.best_epoch
    for key, value in single.test_metrics.items():
        assert resumed.test_metrics[key] == pytest.approx(value, abs=1e-3)
    assert json.loads((ckpt / "last.json").read_text())["run"]["epoch"] == 2


def test_row_loss_scale_two_ranks_match_one_process():
    """``loss_scale='row'`` averages the rows' own means over the global batch's
    rows, not over each rank's: the shards' losses add up to the one-process loss."""
    split, n = planted_split(num_users=120, num_items=30)
    _, one = _train_losses(split, n, _sasrec(1, epochs=1, loss_scale="row"))
    _, two = _train_losses(split, n, _sasrec(2, epochs=1, loss_scale="row"))
    np.testing.assert_allclose(two[0], one[0], rtol=1e-5)
    np.testing.assert_allclose(two, one, atol=1e-4)
    _, per_batch = _train_losses(split, n, _sasrec(1, epochs=1, loss_scale="batch"))
    assert abs(per_batch[0] - one[0]) > 1e-4  # rows of unequal length: a different loss


def test_dr4sr_plus_hooks_refuse_world_size_above_one():
    split, n = planted_split(num_users=40, num_items=20)
    with pytest.raises(TrainingError, match="world_size=1"):
        train_model(split.train, split.valid, split.test, n, _sasrec(2), step_hook=lambda *a: None)


def _pairs(n: int = 150, items: int = 30, seed: int = 0) -> tuple[Sequences, Sequences, int]:
    rng = np.random.default_rng(seed)
    src, tgt = [], []
    for _ in range(n):
        s = rng.integers(1, items + 1, size=int(rng.integers(4, 10))).tolist()
        pick = np.sort(rng.choice(len(s), int(rng.integers(2, 5)), replace=False))
        src.append(s)
        tgt.append([s[j] for j in pick])
    return Sequences.from_lists(src), Sequences.from_lists(tgt), items


def test_regenerator_two_ranks_match_one_process():
    src, tgt, n = _pairs()
    runs = {}
    for world_size in (1, 2):
        config = RegeneratorConfig.fixed(epochs=2, batch_size=32, dropout=0.0, d_model=16, ffn_dim=32,
                                         cond_ffn_dim=32, cond_hidden=16, world_size=world_size, device="cpu")
        events: list[tuple[float, float]] = []

        def record(e, events=events):
            events.append((e.metrics["loss"], e.metrics["entropy"]))

        model = train_regenerator(src, tgt, n, config, progress=record)
        runs[world_size] = (model, np.array(events))
    (single, one), (ddp, two) = runs[1], runs[2]
    assert one.shape == two.shape == (10, 2)  # 2 epochs x ceil(150 / 32) global batches
    np.testing.assert_allclose(two[0], one[0], rtol=1e-5)
    np.testing.assert_allclose(two, one, atol=1e-2)
    assert not ddp.training and ddp.config.world_size == 2
    for (name, a), (_, b) in zip(single.state_dict().items(), ddp.state_dict().items(), strict=True):
        assert torch.allclose(a, b, atol=0.05), name


def test_dr4sr_plus_job_with_world_size_above_one_is_rejected_at_submission():
    from pydantic import ValidationError

    from models.config import TrainJobConfig

    assert TrainJobConfig(world_size=2).world_size == 2
    with pytest.raises(ValidationError, match="world_size"):
        TrainJobConfig(world_size=2, personalize=True)
