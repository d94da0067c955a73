"""Fixtures for the audit tests: isolated cache locations and real caches built once."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from safehub._fetch import location
from tests.audit._caches import Caches, build_caches
from tests.fetch.fakehub import FakeHub

_CACHE_VARS = ("TORCH_HOME", "XDG_CACHE_HOME", "HF_HOME", "HF_HUB_CACHE",
               "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "XDG_STATE_HOME", "SAFEHUB_POLICY",
               "SAFEHUB_OFFLINE")


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the real ~/.cache or ~/.local/state."""
    for var in _CACHE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    monkeypatch.setenv("SAFEHUB_NO_PROGRESS", "1")
    monkeypatch.setattr(location, "_override", None)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Caches]:
    """The caches, built once per module (tests that change them use ``caches``)."""
    fake = FakeHub("127.0.0.1")
    try:
        caches = build_caches(tmp_path_factory.mktemp("caches"), fake)
    finally:
        fake.close()
    yield caches


@pytest.fixture
def caches(built: Caches, tmp_path: Path) -> Caches:
    """A private copy of the built caches (links kept as links)."""
    root = tmp_path / "copy"
    shutil.copytree(built.root, root, symlinks=True)
    mapped = {k: root / os.path.relpath(v, built.root) for k, v in built.paths.items()}
    return Caches(root=root, hub=root / "torch" / "hub", hf=root / "hf",
                  policy=root / "policy.toml", lockfile=root / "safehub.lock",
                  marker=root / "markers" / "pwned", key=built.key, paths=mapped)
