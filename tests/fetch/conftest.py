"""Fixtures for the fetch tests: a real fake GitHub on 127.0.0.1, policies, fetchers.

Every test runs with TORCH_HOME in its own tmp dir and without tokens or offline
settings from the environment, so nothing touches the real ~/.cache.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from safehub.fetch import ArchiveLimits, Fetcher
from tests.fetch.fakehub import FakeHub
from tests.fetch.helpers import FAST, torch_bytes, write_policy


@pytest.fixture(autouse=True)
def _isolated(isolated_torch_home: Path) -> None:
    """Every test here runs against its own torch home (see tests/conftest.py)."""


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    server = FakeHub("127.0.0.1")
    yield server
    server.close()


@pytest.fixture
def other_hub() -> Iterator[FakeHub]:
    """A second host (127.0.0.2): another origin for redirect and token tests."""
    try:
        server = FakeHub("127.0.0.2")
    except OSError as exc:  # pragma: no cover - hosts without the whole 127/8 on lo
        pytest.skip(f"cannot bind 127.0.0.2: {exc}")
    yield server
    server.close()


@pytest.fixture
def policy_file(tmp_path: Path, hub: FakeHub) -> Path:
    return write_policy(tmp_path / "policy.toml", hub)


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def make_fetcher(policy_file: Path, cache_dir: Path) -> Callable[..., Fetcher]:
    """``make_fetcher(**kwargs)``: a Fetcher on the test policy and cache, fast retries."""
    def make(**kwargs: Any) -> Fetcher:
        kwargs.setdefault("cache_dir", cache_dir)
        kwargs.setdefault("http", FAST)
        kwargs.setdefault("archive_limits", ArchiveLimits())
        policy = kwargs.pop("policy", policy_file)
        return Fetcher(policy, **kwargs)
    return make


@pytest.fixture(scope="session")
def checkpoint() -> bytes:
    """A small, clean torch checkpoint (zip format)."""
    import torch

    return torch_bytes({"weight": torch.arange(6.0).reshape(2, 3), "bias": torch.ones(3)})


@pytest.fixture(scope="session")
def big_checkpoint() -> bytes:
    """A clean checkpoint of about 4 MiB (for resume, kill and concurrency tests)."""
    import torch

    g = torch.Generator().manual_seed(0)
    return torch_bytes({"weight": torch.rand(1 << 20, generator=g)})
