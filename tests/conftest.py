"""Fixtures shared by every test module."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests are reproducible (the same examples on every run, in CI too) and carry no
# per-example deadline: `make test` must pass on a loaded 2-CPU machine.
settings.register_profile("safehub", derandomize=True, deadline=None, print_blob=True)
settings.load_profile("safehub")

REPO = Path(__file__).resolve().parents[1]
# ../shared beside the repo (CI always has it); SAFEHUB_SHARED overrides the location.
SHARED = Path(os.environ.get("SAFEHUB_SHARED", REPO.parent / "shared"))

# Some tests build trees deeper than Python's default recursion limit (1000). pytest removes
# old temporary folders with shutil.rmtree, which recurses once per level on Python 3.11: a
# tree left by an interrupted run would otherwise crash the whole session at its end.
sys.setrecursionlimit(max(sys.getrecursionlimit(), 20_000))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The ../shared material; tests that need it skip, saying so, when it is absent."""
    if not (SHARED / "corpus" / "labels.json").is_file():
        pytest.skip(f"../shared material not found at {SHARED} (set SAFEHUB_SHARED)")
    return SHARED


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli() -> Callable[..., CliResult]:
    """Run ``safehub`` in-process: ``cli("scan", path)`` -> CliResult(code, out, err)."""
    from safehub.cli import main

    def run(*args: str | os.PathLike[str]) -> CliResult:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = main([os.fspath(a) for a in args])
        return CliResult(code, out.getvalue(), err.getvalue())

    return run


def run_module(*args: str | os.PathLike[str], env: dict[str, str] | None = None,
               cwd: str | os.PathLike[str] | None = None, timeout: float = 120) -> CliResult:
    """Run ``python -m safehub ARGS`` in a real subprocess."""
    proc = subprocess.run([sys.executable, "-m", "safehub", *map(os.fspath, args)],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def marker_dir(tmp_path: Path) -> Iterator[Path]:
    """A private folder where harmless attack payloads drop their marker files."""
    d = tmp_path / "markers"
    d.mkdir()
    yield d


@pytest.fixture
def isolated_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """TORCH_HOME in a tmp dir, no tokens, offline switches or selected policy from the
    environment, and no set_dir override: nothing touches the real ~/.cache."""
    from safehub._fetch import location

    home = tmp_path / "torch"
    monkeypatch.setenv("TORCH_HOME", str(home))
    for var in ("GITHUB_TOKEN", "GH_TOKEN", "SAFEHUB_OFFLINE", "SAFEHUB_POLICY"):
        monkeypatch.delenv(var, raising=False)
    for var in [v for v in os.environ if v.startswith("SAFEHUB_TOKEN_")]:
        monkeypatch.delenv(var)
    monkeypatch.setattr(location, "_override", None)
    if "torch.hub" in sys.modules:  # torch.hub.set_dir is followed too
        monkeypatch.setattr(sys.modules["torch.hub"], "_hub_dir", None)
    return home
