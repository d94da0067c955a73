"""Fixtures for the hub tests: an isolated torch home and a fake GitHub on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fetch.fakehub import FakeHub


@pytest.fixture(autouse=True)
def _isolated(isolated_torch_home: Path) -> None:
    """Every test here runs against its own torch home (see tests/conftest.py)."""


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    server = FakeHub("127.0.0.1")
    yield server
    server.close()
