"""Recommender tests run torch single-threaded: the shared 2-core machine is
oversubscribed otherwise, and results must not depend on thread timing."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
