"""TorchScript archives in the shapes TorchScript's loaders accept, not only torch.jit.save's.

Each test first shows, with ``fire``, that the real loader runs the module's ``__setstate__``
(it maps a marker file with ``torch.from_file(..., shared=True)``, which creates it), then
that the scan blocks the file under the permissive policy (which lets findings below HIGH
through) unless TorchScript is allowed.
"""

from __future__ import annotations

import importlib.util
import io
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from safehub.findings import Verdict
from safehub.rules import Severity
from safehub.scan import ScanOptions
from tests.scanner.conftest import rules, scan_one

torch = pytest.importorskip("torch")

_PERMISSIVE = Severity.HIGH  # the permissive policy's block_severity

_MODULE = '''
import torch


class Payload(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.x = 1

    def forward(self, x):
        return x

    @torch.jit.export
    def __getstate__(self):
        return (self.x,)

    @torch.jit.export
    def __setstate__(self, state: tuple[int]):
        # The result is used: TorchScript drops calls whose results are not.
        self.x = state[0] + int(torch.from_file("{marker}", True, 16).numel())
        self.training = True
'''


def _scripted(tmp_path: Path, marker: str) -> Any:
    """A scripted module whose ``__setstate__`` creates ``marker`` in the loader's folder."""
    name = f"ts_payload_{marker}"
    source = tmp_path / f"{name}.py"
    source.write_text(_MODULE.format(marker=marker))
    spec = importlib.util.spec_from_file_location(name, source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # TorchScript's frontend reads the class's source through it
    try:
        spec.loader.exec_module(module)
        return torch.jit.script(module.Payload())
    finally:
        del sys.modules[name]


def _without(data: bytes, drop: Callable[[str], bool]) -> bytes:
    """The archive without the records ``drop`` selects."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            if not drop(info.filename):
                zout.writestr(info, zin.read(info))
    return out.getvalue()


def test_lite_interpreter_archive_without_code_or_constants_is_torchscript(
    tmp_path: Path, fire: Callable[..., set[str]]
) -> None:
    """The lite interpreter runs ``bytecode.pkl``'s instructions and needs neither the
    ``code/`` sources nor ``constants.pkl``, by which alone the scanner knew TorchScript:
    without them the archive was a torch zip whose only finding, the ``__torch__`` class
    of data.pkl, was SH101 (clean under permissive), and loading it ran the payload."""
    module = _scripted(tmp_path, "lite_fired")
    full = tmp_path / "full.ptl"
    module._save_for_lite_interpreter(str(full))
    path = tmp_path / "mobile.ptl"
    path.write_bytes(_without(full.read_bytes(),
                              lambda n: "/code/" in n or n.endswith("/constants.pkl")))
    assert fire([(path, "torch-lite")]) == {"lite_fired"}

    report = scan_one(path, ScanOptions(block_severity=_PERMISSIVE))
    assert report.verdict is Verdict.UNSAFE and "SH120" in rules(report)
    assert report.format == "torchscript"
    allowed = scan_one(path, ScanOptions(block_severity=_PERMISSIVE, allow_torchscript=True))
    assert allowed.verdict is Verdict.CLEAN
