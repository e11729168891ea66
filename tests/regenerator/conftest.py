"""Fixtures of the regenerator tests: planted data and a tiny trained regenerator."""

from __future__ import annotations

import pytest
from regen_helpers import Planted, make_planted, one_thread, tiny_config

from models.regenerator import Regenerator, RegeneratorConfig, train_regenerator


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="session")
def planted() -> Planted:
    return make_planted()


@pytest.fixture(scope="session")
def trained(planted: Planted) -> tuple[Regenerator, RegeneratorConfig]:
    config = tiny_config()
    with one_thread():
        model = train_regenerator(planted.src, planted.tgt, planted.num_items, config)
    return model, config
