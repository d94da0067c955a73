"""Nested tensors: torch reads their stride metadata past its end on load (SH108).

``torch._utils._rebuild_nested_tensor(buffer, sizes, strides, offsets)`` is what
``torch.save`` writes for a nested tensor, and torch's weights-only loader allows it. torch's
``_nested_view_from_buffer`` reads each row's strides as wide as ``sizes`` is before it
compares the two tensors' shapes: a ``sizes`` wider than ``strides`` reads the heap past the
strides tensor, which ``torch.load(weights_only=True)`` then prints in its error message (or
crashes on, when it reads far enough). The scan reads the metadata records of a torch zip
checkpoint and passes only metadata torch reads within bounds.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from safehub.findings import Verdict
from tests.scanner.conftest import rules, scan_one

torch = pytest.importorskip("torch")


class _Reduce:
    def __init__(self, func: object, args: tuple[object, ...]):
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return self.func, self.args


def _wide_sizes(path: Path, width: int) -> None:
    """A nested tensor of one component whose sizes row has ``width`` columns (all 2) and
    whose strides row has one."""
    sizes = torch.full((1, width), 2)
    torch.save({"n": _Reduce(torch._utils._rebuild_nested_tensor, (
        torch.arange(8.0), sizes, torch.tensor([[1]]), torch.tensor([0])))}, path)


_LOAD = ("import sys, warnings; warnings.simplefilter('ignore'); import torch\n"
         "try:\n    torch.load(sys.argv[1], weights_only=True)\n"
         "except Exception as exc:\n    print(exc)\n")


def test_sizes_wider_than_strides_leak_heap_bytes_and_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "leak.pt"
    _wide_sizes(path, 64)
    run = subprocess.run([sys.executable, "-c", _LOAD, str(path)], capture_output=True,
                         text=True, timeout=120, check=False)
    # torch's error lists 64 strides; the file holds one (the rest is heap memory)
    found = re.search(r"strides=? ?\[([^\]]*)\]", run.stdout)
    assert found and len(found.group(1).split(",")) == 64, run
    report = scan_one(path)  # was CLEAN: every global in it is allowed
    assert report.verdict is Verdict.UNSAFE and rules(report) == {"SH108"}


def test_sizes_far_wider_than_strides_crash_the_loader(tmp_path: Path) -> None:
    path = tmp_path / "crash.pt"
    _wide_sizes(path, 4_000_000)
    run = subprocess.run([sys.executable, "-c", _LOAD, str(path)], capture_output=True,
                         text=True, timeout=120, check=False)
    assert run.returncode == -signal.SIGSEGV, run
    assert rules(scan_one(path)) == {"SH108"}


@pytest.mark.parametrize("case", ["offset", "stride", "negative"])
def test_components_outside_the_buffer_are_refused(case: str, tmp_path: Path) -> None:
    # torch refuses these itself (its view check); the scan does not pass them either
    offsets = torch.tensor([0, 100 if case == "offset" else -1 if case == "negative" else 0])
    strides = torch.tensor([[1], [50 if case == "stride" else 1]])
    path = tmp_path / f"{case}.pt"
    torch.save({"n": _Reduce(torch._utils._rebuild_nested_tensor, (
        torch.arange(8.0), torch.tensor([[2], [2]]), strides, offsets))}, path)
    assert rules(scan_one(path)) == {"SH108"}


def test_real_nested_checkpoints_scan_clean(tmp_path: Path) -> None:
    path = tmp_path / "nested.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nested tensor support is a prototype
        nested = torch.nested.nested_tensor([torch.ones(2, 3), torch.zeros(4, 3),
                                             torch.ones(0, 3)])
        torch.save({"n": nested, "m": torch.nested.nested_tensor([torch.ones(5)])}, path)
    report = scan_one(path)
    assert report.verdict is Verdict.CLEAN, report.findings
