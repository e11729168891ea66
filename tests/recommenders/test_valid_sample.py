"""TrainConfig.valid_sample: validation on a fixed seeded sample of users at
every epoch, the final test on every user (issue 15)."""

from __future__ import annotations

import numpy as np
from recsys_synthetic import planted_split

from models.config import TrainConfig
from models.training import _valid_rows, train_model


def test_valid_sample_is_fixed_and_test_stays_full():
    split, n = planted_split(num_users=120, num_items=30)
    config = TrainConfig(model="sasrec", epochs=2, batch_size=64, valid_sample=40, device="cpu")
    picked = _valid_rows(split.valid, config)
    assert len(picked) == 40
    assert np.array_equal(picked.user, _valid_rows(split.valid, config).user)  # same users every call
    assert set(picked.user.tolist()) <= set(split.valid.user.tolist())
    assert len(_valid_rows(split.valid, config.model_copy(update={"valid_sample": None}))) == len(split.valid)

    result = train_model(split.train, split.valid, split.test, n, config)
    assert len(result.history) == 2
    assert all(len(v) == len(split.test) for v in result.test_per_user.values())
