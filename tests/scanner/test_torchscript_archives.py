"""TorchScript archives in the shapes TorchScript's loaders accept, not only torch.jit.save's.

Each test first shows, with ``fire``, that the real loader runs the module's ``__setstate__``
(it maps a marker file with ``torch.from_file(..., shared=True)``, which creates it), then
that the scan blocks the file under the permissive policy (which lets findings below HIGH
through) unless TorchScript is allowed.
"""

from __future__ import annotations

import importlib.util
import io
import pickle
import struct
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


def _flatbuffer_pickle(flatbuffer: bytes) -> bytes:
    """A pickle of ``{}`` that is also the flatbuffer module, moved to where its own first
    four bytes point.

    A flatbuffer's only absolute offset is its first four bytes (the root table's
    position); everything else is relative, so the module's bytes after those four can be
    moved as one block. The pickle's first opcodes end in SHORT_BINUNICODE text whose last
    four characters are the 'PTMF' torch's format test reads at byte 4: those four bytes
    then name a position a multiple of 8 (which the flatbuffer verifier needs) away from
    the module's root table, and the module's bytes go inside a BINBYTES value that puts
    its root table there.
    """
    root = struct.unpack("<I", flatbuffer[:4])[0]
    assert flatbuffer[4:8] == b"PTMF" and root % 4 == 0
    # SHORT_BINUNICODE "\0\0PTMF", POP (names 0x068c), or NEWTRUE, "\0PTMF", POP, POP
    # (names 0x058c88): whichever is a multiple of 8 away from the root table.
    heads = {4: b"\x8c\x06\x00\x00PTMF0", 0: b"\x88\x8c\x05\x00PTMF00"}
    head = heads[root % 8]
    shift = struct.unpack("<I", head[:4])[0] - root
    blob = b"\x00" * (4 + shift - len(head) - 5) + flatbuffer[4:]
    return head + b"B" + struct.pack("<I", len(blob)) + blob + b"0}."  # BINBYTES, POP, {}


def test_pickle_that_is_also_a_flatbuffer_module_is_torchscript(
    tmp_path: Path, fire: Callable[..., set[str]]
) -> None:
    """torch.jit.load and the lite interpreter read a file as a flatbuffer module when its
    bytes 4-8 are 'PTMF', before any other test: a pickle of ``{}`` carrying a module there
    was a CLEAN pickle under every policy, while torch.jit.load ran the module's
    ``__setstate__``."""
    module = _scripted(tmp_path, "fb_fired")
    flat = tmp_path / "module.ff"
    module._save_for_lite_interpreter(str(flat), _use_flatbuffer=True)
    data = _flatbuffer_pickle(flat.read_bytes())
    assert pickle.loads(data) == {}
    path = tmp_path / "state.pt"
    path.write_bytes(data)
    assert fire([(path, "torch-jit")]) == {"fb_fired"}

    report = scan_one(path)
    assert report.verdict is Verdict.UNSAFE and "SH120" in rules(report)
    allowed = scan_one(path, ScanOptions(allow_torchscript=True))
    assert allowed.verdict is Verdict.CLEAN and allowed.format == "pickle"
    # The module alone is TorchScript too, not an unknown format.
    alone = scan_one(flat)
    assert alone.format == "torchscript" and rules(alone) == {"SH120"}
    assert scan_one(flat, ScanOptions(allow_torchscript=True)).verdict is Verdict.CLEAN
