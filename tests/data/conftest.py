"""Fixtures for the data-layer tests: tiny synthetic logs and a file writer."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.data.synthetic import SyntheticData, generate

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@pytest.fixture(scope="session")
def tiny() -> SyntheticData:
    return generate(num_users=60, num_items=40, num_patterns=8, seed=3)


@pytest.fixture
def write_file(tmp_path: Path):
    """write_file(name, content) -> path; str content is written as UTF-8."""

    def write(name: str, content: str | bytes) -> Path:
        path = tmp_path / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    return write


@pytest.fixture
def shared_file():
    """shared_file(name) -> path under ../shared/data, skipping the test when absent."""

    def find(name: str) -> Path:
        path = SHARED_DATA / name
        if not path.exists():
            pytest.skip(f"{path} not available")
        return path

    return find
