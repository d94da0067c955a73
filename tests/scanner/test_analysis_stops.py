"""Where the scanner stops reading, no loader may read on unseen.

A stop (an early return, a ``break``, a limit) that emits a finding below HIGH let a file
pass the permissive policy while a loader read past that point and unpickled more. Each
test here builds such a file, shows with a real loader that the payload past the stop
runs, and pins that the scan now blocks it under every policy.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from safehub.findings import Verdict
from safehub.rules import Severity
from safehub.scan import ScanOptions
from tests.scanner import _builders as B
from tests.scanner.conftest import rules, scan_one

_PERMISSIVE = Severity.HIGH  # the permissive policy's block_severity


def test_zip_record_cut_at_the_record_limit_is_not_checked(
        tmp_path: Path, fire: Callable[..., set[str]]) -> None:
    """A deflated data.pkl longer than the record limit: torch reads all of it, and the
    payload after the limit ran while the cut stream read as merely truncated (SH111)."""
    pad = 2 << 20
    pickle = (b"\x80\x02B" + struct.pack("<I", pad) + b"\0" * pad + b"0"
              + B.call_prefix("zip_record_limit") + b"}.")
    members = [m for m in B.torch_zip_members({}) if not m.name.endswith("data.pkl")]
    members.insert(0, B.ZipMember("archive/data.pkl", pickle, method=8))
    path = B.write(tmp_path / "big.pt", B.build_zip(members).data)
    assert fire([(path, "torch")]) == {"zip_record_limit"}

    report = scan_one(path, ScanOptions(max_record_size=1 << 20, block_severity=_PERMISSIVE))
    assert report.verdict is not Verdict.CLEAN
    assert "SH191" in rules(report)


def _cli_permissive(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "safehub", "scan", "--policy", "permissive",
                           str(path)], capture_output=True, text=True, timeout=120, check=False)


def test_npz_member_whose_data_runs_past_the_file_end_is_analyzed(
        tmp_path: Path, fire: Callable[..., set[str]]) -> None:
    """A deflated member whose declared compressed size runs past the end of the file:
    miniz refuses it, but zipfile reads lazily and numpy.load unpickled its object array
    while the scanner skipped the member with one SH115."""
    pytest.importorskip("numpy")
    number = B.npy_bytes("{'descr': '<i4', 'fortran_order': False, 'shape': (1,), }",
                         b"\0" * 4)
    objects = B.npy_bytes("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }",
                          B.call_prefix("npz_past_end") + b"N.")
    built = B.build_zip([B.ZipMember("b.npy", number), B.ZipMember("a.npy", objects, method=8)])
    data = bytearray(built.data)
    second = built.central_offset + 46 + len("b.npy")  # a.npy's central record
    struct.pack_into("<I", data, second + 20, len(data) + 1000)  # its compressed size
    path = B.write(tmp_path / "past_end.npz", bytes(data))
    assert fire([(path, "numpy")]) == {"npz_past_end"}

    report = scan_one(path, ScanOptions(block_severity=_PERMISSIVE))
    assert report.verdict is Verdict.UNSAFE
    assert {"SH100"} <= rules(report)
    cli = _cli_permissive(path)
    assert cli.returncode == 1, cli.stdout + cli.stderr
    assert "posix.system" in cli.stdout
