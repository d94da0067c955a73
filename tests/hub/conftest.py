"""Fixtures for the hub tests: an isolated torch home and a fake GitHub on 127.0.0.1."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from safehub._fetch import location
from tests.fetch.fakehub import FakeHub


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for var in ("GITHUB_TOKEN", "GH_TOKEN", "SAFEHUB_OFFLINE", "SAFEHUB_POLICY"):
        monkeypatch.delenv(var, raising=False)
    for var in [v for v in os.environ if v.startswith("SAFEHUB_TOKEN_")]:
        monkeypatch.delenv(var)
    monkeypatch.setattr(location, "_override", None)


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    server = FakeHub("127.0.0.1")
    yield server
    server.close()
