"""Fixtures for the pattern tests: the shared S3-Rec text files as mining/pair inputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.data.sequences import Sequences, Split
from models.data.split import leave_one_out

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def _load_split(name: str) -> Split:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} not available")
    # One line per user, already chronological; 5-core is a no-op on these files.
    with path.open() as handle:
        rows = [[int(tok) for tok in line.split()[1:]] for line in handle if line.strip()]
    return leave_one_out(Sequences.from_lists(rows))


@pytest.fixture(scope="session")
def beauty_split() -> Split:
    return _load_split("amazon-beauty.txt")


@pytest.fixture(scope="session")
def sports_split() -> Split:
    return _load_split("amazon-sports.txt")
