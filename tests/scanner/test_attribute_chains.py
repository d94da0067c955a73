"""Protocol-4 dotted names walk attributes from the module: ``pathlib`` + ``os.system`` is
``os.system``, reached through what pathlib imported.

The knowledge table rates a name by its longest listed prefix, so ``pathlib.os.system``
was rated as ``pathlib`` (a harmless path value, low) and ``torch.os.system`` as ``torch``
(medium): below the permissive policy's threshold, a pickle calling ``os.system`` that way
was CLEAN there while every loader ran it. Each case first runs for real (a marker file
appears), then the scan must block it under the permissive policy.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from safehub.findings import Verdict
from safehub.rules import Severity
from safehub.scan import ScanOptions
from tests.scanner import _builders as B
from tests.scanner.conftest import scan_one

_PERMISSIVE = ScanOptions(block_severity=Severity.HIGH)  # the permissive policy's threshold

# module line, dotted name: each reaches os.system through modules the first one imports.
_CHAINS = [
    ("pathlib", "os.system"),  # rated as pathlib: low
    ("torch", "os.system"),  # rated as torch: medium
    ("numpy._core._internal", "ctypes._os.system"),  # rated as a numpy dtype helper: low
    ("enum", "bltns.len"),  # enum's builtins, under a name no table lists
]


def _call(module: str, name: str, arg: str) -> bytes:
    """Protocol 4: STACK_GLOBAL(module, name)(arg)."""
    return (b"\x80\x04" + B.binunicode(module) + B.binunicode(name) + b"\x93"
            + B.binunicode(arg) + b"\x85R.")


def test_dotted_names_through_imported_modules_are_judged_by_what_they_reach(
    tmp_path: Path, fire: Callable[..., set[str]]
) -> None:
    pytest.importorskip("torch")
    paths = {}
    for module, name in _CHAINS[:3]:
        marker = f"chain_{module.replace('.', '_')}"
        paths[marker] = B.write(tmp_path / f"{marker}.pkl",
                                _call(module, name, B.marker_cmd(marker)))
    assert fire([(p, "pickle") for p in paths.values()]) == set(paths)
    for path in paths.values():
        report = scan_one(path, _PERMISSIVE)
        assert report.verdict is Verdict.UNSAFE, report.findings
        assert {f.severity for f in report.findings if f.rule_id == "SH100"} == {
            Severity.CRITICAL}


def test_dotted_names_without_a_listed_tail_are_high(tmp_path: Path) -> None:
    """A tail no table lists is still a walk through what the module imported: at least
    high, whatever the module's own rating."""
    module, name = _CHAINS[3]
    report = scan_one(B.write(tmp_path / "m.pkl", _call(module, name, "x")), _PERMISSIVE)
    assert report.verdict is Verdict.UNSAFE
    assert [f.severity for f in report.findings if f.rule_id == "SH100"] == [Severity.HIGH]


# Standard-library functions that run a code string in one call or two, which no entry of
# the knowledge table listed: as unlisted names they were medium, so CLEAN under permissive.
_CODE_RUNNERS = {
    "subinterp": lambda code: (B.stack_global("_xxsubinterpreters", "run_string")
                               + B.stack_global("_xxsubinterpreters", "create") + b")R"
                               + B.binunicode(code) + b"\x86R"),
    "testcapi": lambda code: (B.stack_global("_testcapi", "run_in_subinterp")
                              + B.binunicode(code) + b"\x85R"),
}


def test_code_string_runners_of_the_standard_library_are_critical(
    tmp_path: Path, fire: Callable[..., set[str]]
) -> None:
    paths = {}
    for marker, build in _CODE_RUNNERS.items():
        pytest.importorskip({"subinterp": "_xxsubinterpreters", "testcapi": "_testcapi"}[marker])
        code = f"open({marker!r}, 'w').close()"
        paths[marker] = B.write(tmp_path / f"{marker}.pkl", b"\x80\x04" + build(code) + b".")
    assert fire([(p, "pickle") for p in paths.values()]) == set(paths)
    for path in paths.values():
        report = scan_one(path, _PERMISSIVE)
        assert report.verdict is Verdict.UNSAFE, report.findings


def test_file_writers_outside_the_listed_names_block_under_permissive(
    tmp_path: Path, fire: Callable[..., set[str]]
) -> None:
    """``numpy.savez_compressed(path)`` writes a file where the pickle says: the table
    listed ``numpy.savez`` only, so it was an unlisted numpy name (medium) and CLEAN under
    permissive. numpy 2's ``numpy.lib._format_impl`` (numpy.lib.format's code, whose
    ``read_array`` unpickles) was rated as plain ``numpy``: the general entry for the
    written name hid the one for the module its alias stands for."""
    pytest.importorskip("numpy")
    path = B.write(tmp_path / "w.pkl", b"\x80\x04" + B.stack_global("numpy", "savez_compressed")
                   + B.binunicode("written") + b"\x85R.")
    assert fire([(path, "pickle")]) == {"written.npz"}
    assert scan_one(path, _PERMISSIVE).verdict is Verdict.UNSAFE
    for module, name in [("numpy.lib._format_impl", "read_array"), ("torch", "save"),
                         ("numpy._core.memmap", "memmap"), ("torch", "from_file")]:
        data = b"\x80\x04" + B.stack_global(module, name) + b")R."
        report = scan_one(B.write(tmp_path / f"{name}.pkl", data), _PERMISSIVE)
        assert report.verdict is Verdict.UNSAFE, (module, name)
