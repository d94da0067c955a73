"""The scan-only install: scan, audit, verify and policy work where torch cannot be imported,
and the torch commands say which extra to install.

Each run is a real ``python -m safehub`` process with a meta-path finder that makes
``import torch`` fail, as on a machine where ``pip install safehub`` left torch out.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import sys as _sys

if _sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib
from pathlib import Path

import pytest

from tests.conftest import REPO

NO_TORCH = """
import sys

class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError("No module named 'torch' (blocked by the test)")
        return None

sys.meta_path.insert(0, _NoTorch())
import importlib.util
_find = importlib.util.find_spec
def find_spec(name, package=None):
    if name == "torch" or name.startswith("torch."):
        return None
    return _find(name, package)
importlib.util.find_spec = find_spec
from safehub.cli import main
code = main(sys.argv[1:])
assert "torch" not in sys.modules
raise SystemExit(code)
"""


def _run(*args: str | os.PathLike[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "XDG_STATE_HOME": str(cwd / "state")}
    env.pop("SAFEHUB_POLICY", None)
    return subprocess.run([sys.executable, "-c", NO_TORCH, *map(os.fspath, args)],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.pkl").write_bytes(pickle.dumps({"lr": 0.1}, protocol=4))
    return tmp_path


def test_scan_audit_verify_and_policy_run_without_torch(files: Path) -> None:
    from tests.signing.helpers import make_key

    key = make_key(files, "k")
    runs = {
        "scan": _run("scan", "m", "-f", "sarif", cwd=files),
        "audit": _run("audit", "--no-state", "m", "-f", "json", cwd=files),
        "sign": _run("sign", "m", "--key", key.private_path, cwd=files),
    }
    runs["verify"] = _run("verify", "m", "--key", key.public_path, cwd=files)
    runs["policy show"] = _run("policy", "show", "strict", cwd=files)
    runs["policy explain"] = _run("policy", "explain", "pytorch/vision", cwd=files)
    for name, proc in runs.items():
        assert "Traceback" not in proc.stderr, (name, proc.stderr)
        assert proc.returncode in (0, 1), (name, proc.returncode, proc.stderr)
    assert runs["scan"].returncode == 0 and runs["verify"].returncode == 0


@pytest.mark.parametrize("args", [["load", "REPO", "linear", "--source", "local",
                                   "--out", "w.safetensors"],
                                  ["list", "REPO", "--source", "local"],
                                  ["help", "REPO", "linear", "--source", "local"],
                                  ["convert", "m/config.pkl"]])
def test_torch_commands_name_the_extra(files: Path, args: list[str]) -> None:
    repo = files / "repo"
    repo.mkdir()
    (repo / "hubconf.py").write_text("def linear():\n    return {}\n")
    proc = _run(*[str(repo) if a == "REPO" else a for a in args], cwd=files)
    assert proc.returncode == 2, proc.stderr
    assert "safehub[torch]" in proc.stderr
    assert proc.stderr.splitlines()[0].startswith("safehub: ")
    assert "Traceback" not in proc.stderr
    assert not (files / "w.safetensors").exists()


def test_torch_is_an_extra_not_a_dependency() -> None:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not [d for d in meta["dependencies"] if d.split(">")[0].split("=")[0] == "torch"]
    assert any(d.startswith("torch") for d in meta["optional-dependencies"]["torch"])
    # make test / make demo keep installing the pinned CPU build before the extras.
    makefile = (REPO / "Makefile").read_text()
    assert "TORCH_SPEC ?= torch==2.13.0" in makefile


def test_the_hub_api_names_the_extra_without_torch(files: Path) -> None:
    repo = files / "repo"
    repo.mkdir()
    (repo / "hubconf.py").write_text("def linear():\n    return {}\n")
    code = NO_TORCH.split("from safehub.cli import main")[0] + (
        "import safehub\n"
        "from safehub.errors import SafehubError\n"
        "try:\n"
        f"    safehub.list({str(repo)!r}, source='local')\n"
        "except SafehubError as exc:\n"
        "    print(exc.diagnostics())\n"
        "assert 'torch' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=files, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "safehub[torch]" in proc.stdout and "hub.list" in proc.stdout
