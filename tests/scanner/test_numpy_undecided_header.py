""".npy headers this scanner cannot decide, which numpy still reads as an object dtype.

The scanner parses ``descr`` with its own grammar; numpy passes it to ``numpy.dtype``,
which also takes ``'object'``, ``'i4,O'`` and a ``('O', (2,))`` subarray, and with
``allow_pickle=True`` lifts its header size limit. For an object dtype numpy then
unpickles the bytes after the header. The scanner used to stop at its SH131 (medium),
which the permissive policy (blocking from high) passed: the file scanned clean and ran
``posix.system`` in numpy.load. Now the bytes after an undecided header are read as that
pickle too.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from safehub.findings import Verdict
from safehub.rules import Severity
from safehub.scan import ScanOptions
from tests.scanner import _builders as B
from tests.scanner.conftest import rules, scan_one

pytest.importorskip("numpy")

PERMISSIVE = ScanOptions(block_severity=Severity.HIGH)  # the permissive preset's threshold


def _npy(descr: str, data: bytes, *, pad: int = 0) -> bytes:
    header = ("{'descr': " + descr + ", 'fortran_order': False, 'shape': (1,), }").encode()
    header += b" " * (pad + (-(len(header) + pad + 13) % 64)) + b"\n"
    return b"\x93NUMPY\x02\x00" + struct.pack("<I", len(header)) + header + data


CASES = {
    "object": "'object'",
    "comma": "'i4,O'",
    "subarray": "('O', (2,))",
    "struct-subarray": "[('a', ('O', (2,)))]",
}


@pytest.mark.parametrize("name", [*CASES, "huge-header"])
def test_object_array_behind_an_undecided_header(name: str, tmp_path: Path,
                                                 fire: object) -> None:
    marker = f"npy_{name.replace('-', '_')}"
    if name == "huge-header":
        data = _npy("'|O'", B.os_system_p0(marker), pad=70_000)
    else:
        data = _npy(CASES[name], B.os_system_p0(marker))
    path = B.write(tmp_path / f"{name}.npy", data)
    assert marker in fire([(path, "numpy")])  # type: ignore[operator]
    report = scan_one(path, PERMISSIVE)
    assert report.verdict is Verdict.UNSAFE, [f.message for f in report.findings]
    assert {"SH131", "SH100"} <= rules(report, blocking=False)
    assert "SH100" in rules(report)


def test_numbers_behind_an_undecided_header_add_nothing(tmp_path: Path) -> None:
    data = _npy("'object'", struct.pack("<4d", 1.5, -2.0, 3.25, 1e300))
    report = scan_one(B.write(tmp_path / "n.npy", data), PERMISSIVE)
    assert rules(report, blocking=False) == {"SH131"}
