"""Fixtures for the scanner tests: scanning helpers and the attack firing range.

``fire`` loads files the way victims do (pickle.load, torch.load, numpy.load, joblib.load)
in ONE throwaway subprocess whose working directory is a private folder, and returns the
names of the marker files their payloads created there. A test that shows an attack is
blocked first shows, with ``fire``, that the same file really runs its payload.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from safehub.findings import FileReport
from safehub.scan import ScanOptions, scan

_FIRE = r"""
import json, os, sys
cases = json.loads(sys.argv[1])
for path, loader, setup in cases:
    try:
        if setup:
            exec(setup)
        if loader == "pickle":
            import pickle
            with open(path, "rb") as f:
                pickle.load(f)
        elif loader == "pickle-all":  # every stream, as a loader that reads on would
            import pickle
            with open(path, "rb") as f:
                while f.peek(1) if hasattr(f, "peek") else True:
                    pickle.load(f)
        elif loader == "torch":
            import torch
            torch.load(path, weights_only=False)
        elif loader == "numpy":
            import numpy as np
            r = np.load(path, allow_pickle=True)
            if hasattr(r, "files"):
                for k in r.files:
                    r[k]
        elif loader == "joblib":
            import joblib
            joblib.load(path)
        elif loader == "torch-jit":
            import torch
            torch.jit.load(path)
        elif loader == "torch-lite":  # the mobile (lite) TorchScript interpreter
            from torch.jit.mobile import _load_for_lite_interpreter
            _load_for_lite_interpreter(path)
        elif loader == "torch-package":  # torch.package's miniz reader, its pickle "res/obj.pkl"
            from torch.package import PackageImporter
            PackageImporter(path).load_pickle("res", "obj.pkl")
        elif loader == "safetensors":
            import safetensors.numpy
            safetensors.numpy.load_file(path)
        else:
            raise SystemExit(f"unknown loader {loader}")
    except SystemExit:
        raise
    except BaseException as exc:
        print(f"{os.path.basename(path)}: {type(exc).__name__}: {exc}"[:300], file=sys.stderr)
"""

Case = tuple[str | os.PathLike[str], str] | tuple[str | os.PathLike[str], str, str]


def fire_cases(cases: Sequence[Case], cwd: Path, timeout: float = 240) -> set[str]:
    """Load every case in one subprocess running in ``cwd``; the files created there."""
    before = set(os.listdir(cwd))
    spec = [[os.fspath(c[0]), c[1], c[2] if len(c) > 2 else ""] for c in cases]  # type: ignore[misc]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEHUB")}
    env["PYTHONWARNINGS"] = "ignore"
    subprocess.run([sys.executable, "-c", _FIRE, json.dumps(spec)], cwd=cwd, env=env,
                   stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False)
    return set(os.listdir(cwd)) - before


@pytest.fixture
def fire(marker_dir: Path) -> Callable[..., set[str]]:
    """``fire([(path, loader[, setup]), ...])`` -> names of the marker files created."""

    def run(cases: Sequence[Case]) -> set[str]:
        return fire_cases(cases, marker_dir)

    return run


def scan_one(path: str | os.PathLike[str], options: ScanOptions | None = None) -> FileReport:
    """Scan one file; the test fails if the scanner reports anything but one file."""
    report = scan(path, options=options)
    assert len(report.files) == 1
    return report.files[0]


def rules(report: FileReport, *, blocking: bool = True) -> set[str]:
    """The rule ids of a file's (blocking) findings."""
    return {f.rule_id for f in report.findings if f.blocking or not blocking}
