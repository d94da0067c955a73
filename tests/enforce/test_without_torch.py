"""safehub.enforce() where torch cannot be imported (``pip install safehub`` without the
``safehub[torch]`` extra): the pickle loaders are still guarded, it says so (return value and
logging), and torch's loaders are patched if torch becomes importable and is imported later.

Each run is a real process with the scan-only tests' import hook that makes ``import torch``
fail; the same program without enforce() shows the marker payload firing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.test_scan_only import NO_TORCH
from tests.conftest import REPO

BLOCK_TORCH = NO_TORCH.split("from safehub.cli import main")[0]

PROGRAM = """
import logging, os, pickle, sys, importlib.util
records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append(record.getMessage())
logging.getLogger("safehub").addHandler(Keep())
logging.getLogger("safehub").setLevel(logging.INFO)

marker = sys.argv[1]
class Payload:
    def __reduce__(self):
        return os.mkdir, (marker + "-pickle",)
data = pickle.dumps({"lr": 0.1, "x": Payload()})

import safehub
if sys.argv[2] == "enforce":
    e = safehub.enforce()
    print("protects", ",".join(e.protects), "waiting", e.waiting_for_torch)
    print("log", " | ".join(records))
try:
    pickle.loads(data)
    print("pickle LOADED")
except Exception as exc:
    print("pickle REFUSED", type(exc).__name__)

import numpy
class NpPayload:
    def __reduce__(self):
        return os.mkdir, (marker + "-numpy",)
arr = numpy.empty(1, dtype=object)
arr[0] = NpPayload()
numpy.save(marker + ".npy", arr, allow_pickle=True)
try:
    numpy.load(marker + ".npy", allow_pickle=True)
    print("numpy LOADED")
except Exception as exc:
    print("numpy REFUSED", type(exc).__name__)

# torch becomes importable (installed later in the same process): its loaders get patched.
sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "_NoTorch"]
importlib.util.find_spec = _find
import torch
if sys.argv[2] == "enforce":
    print("after import", ",".join(e.protects), "waiting", e.waiting_for_torch)
class TorchPayload:
    def __reduce__(self):
        return os.mkdir, (marker + "-torch",)
torch.save({"w": torch.ones(1), "x": TorchPayload()}, marker + ".pt")
try:
    torch.load(marker + ".pt", weights_only=False)
    print("torch LOADED")
except Exception as exc:
    print("torch REFUSED", type(exc).__name__)
"""


def _run(tmp_path: Path, mode: str) -> tuple[str, Path]:
    marker = tmp_path / mode / "fired"
    marker.parent.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "XDG_STATE_HOME": str(tmp_path / "state"),
           "TORCH_HOME": str(tmp_path / "torch")}
    env.pop("SAFEHUB_POLICY", None)
    proc = subprocess.run([sys.executable, "-c", BLOCK_TORCH + PROGRAM, str(marker), mode],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, marker


def test_enforce_without_torch_guards_pickle_and_says_so(tmp_path: Path) -> None:
    pytest.importorskip("torch")  # the program imports torch once it is unblocked
    plain, plain_marker = _run(tmp_path, "plain")
    # Without safehub, every payload runs.
    assert "pickle LOADED" in plain and "numpy LOADED" in plain and "torch LOADED" in plain
    for kind in ("pickle", "numpy", "torch"):
        assert Path(f"{plain_marker}-{kind}").is_dir(), kind

    out, marker = _run(tmp_path, "enforce")
    assert "protects pickle waiting True" in out
    assert "torch is not installed" in out and "safehub[torch]" in out
    assert "pickle REFUSED UnsafeModel" in out
    assert "numpy REFUSED UnsafeModel" in out
    assert "after import pickle,torch waiting False" in out
    assert "torch REFUSED" in out and "torch LOADED" not in out
    assert not list(marker.parent.glob("fired-*")), "a payload ran under enforce()"
