"""--decompile: unsafe records shown as the Python they would run (fickling), never a verdict."""

from __future__ import annotations

import io
import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import torch

from safehub._scanner.explain import decompile
from safehub.findings import Verdict
from safehub.scan import ScanOptions, scan
from tests.conftest import CliResult


class _Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, ("echo decompiled-marker",)


def test_unsafe_torch_checkpoint_is_decompiled(tmp_path: Path) -> None:
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2), "x": _Payload()}, buf)
    path = tmp_path / "ckpt.pt"
    path.write_bytes(buf.getvalue())
    report = scan(path, options=ScanOptions(decompile=True)).files[0]
    assert report.verdict is Verdict.UNSAFE
    [(location, source)] = report.decompiled
    assert location.endswith("data.pkl")
    assert "system('echo decompiled-marker')" in source


def test_only_when_asked_and_only_for_unsafe_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps(_Payload()))
    clean = tmp_path / "clean.pkl"
    clean.write_bytes(pickle.dumps({"a": 1}))
    assert scan(bad).files[0].decompiled == ()
    assert scan(clean, options=ScanOptions(decompile=True)).files[0].decompiled == ()


def test_malformed_streams_do_not_break_anything() -> None:
    assert decompile(b"\x80\x04cos\nsystem\n\xff").startswith("# fickling could not")


def test_cli_shows_it_in_text_and_json(cli: Callable[..., CliResult], tmp_path: Path) -> None:
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps(_Payload(), protocol=2))
    text = cli("scan", "--decompile", bad)
    assert text.code == 1
    assert "decompiled pickle (fickling):" in text.out
    assert "system('echo decompiled-marker')" in text.out
    data = json.loads(cli("scan", "--decompile", "-f", "json", bad).out)
    assert "echo decompiled-marker" in data["files"][0]["decompiled"]["pickle"]
