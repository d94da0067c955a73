"""torch's legacy formats: the five-pickle stream file and the oldest tar archive."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest

from safehub.findings import Verdict
from safehub.rules import Severity
from safehub.scan import ScanOptions
from tests.scanner import _builders as B
from tests.scanner.conftest import rules, scan_one

torch = pytest.importorskip("torch")

OBJECTS = {
    "tensor": lambda: torch.arange(6.0).reshape(2, 3),
    "state_dict": lambda: torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    .state_dict(),
    "dtypes": lambda: {str(d): torch.zeros(2, dtype=d) for d in
                       (torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.bool,
                        torch.complex64, torch.int64, torch.uint8)},
    "shared": lambda: (lambda t: [t, t[1:], t.view(3, 1)])(torch.ones(3)),
    "mixed": lambda: {"epoch": 2, "w": torch.ones(2), "names": ["a", "b"], "b": b""},
    "empty": dict,
}


@pytest.mark.parametrize("name", sorted(OBJECTS))
def test_legacy_checkpoints_are_clean(name: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.pt"
    torch.save(OBJECTS[name](), path, _use_new_zipfile_serialization=False)
    report = scan_one(path)
    assert report.verdict is Verdict.CLEAN, [f.message for f in report.findings]
    assert report.format == "torch-legacy"


def _legacy() -> bytes:
    return B.torch_legacy_bytes({"w": torch.ones(4), "b": torch.zeros(2, dtype=torch.int64)})


def test_trailing_data_after_storages(tmp_path: Path) -> None:
    report = scan_one(B.write(tmp_path / "t.pt", _legacy() + B.os_system_p0("x")))
    assert report.verdict is Verdict.UNSAFE and "SH113" in rules(report)


def test_truncated_storage(tmp_path: Path) -> None:
    report = scan_one(B.write(tmp_path / "t.pt", _legacy()[:-5]))
    assert report.verdict is Verdict.UNSAFE and "SH111" in rules(report)


def test_storage_keys_not_a_list(tmp_path: Path) -> None:
    streams, rest = B.legacy_streams(_legacy())
    streams[4] = pickle.dumps("0", 2)
    report = scan_one(B.write(tmp_path / "t.pt", b"".join(streams) + rest))
    assert "SH140" in rules(report)


def test_wrong_magic_number(tmp_path: Path) -> None:
    streams, rest = B.legacy_streams(_legacy())
    streams[0] = pickle.dumps(12345, 2)
    report = scan_one(B.write(tmp_path / "t.pt", b"".join(streams) + rest))
    assert "SH110" in rules(report)


def test_plain_tar_archive_is_clean(tmp_path: Path) -> None:
    path = B.write(tmp_path / "t.tar", B.torch_tar_bytes(pickle.dumps({"a": 1}, 2)))
    assert torch.load(path, weights_only=False) == {"a": 1}
    report = scan_one(path)
    assert report.verdict is Verdict.CLEAN and report.format == "torch-tar"


def test_tar_without_torch_members_is_unknown(tmp_path: Path) -> None:
    report = scan_one(B.write(tmp_path / "x.tar", B.tar_bytes([("readme", b"hi")])))
    assert report.verdict is Verdict.UNKNOWN


def test_tar_record_count_out_of_range(tmp_path: Path) -> None:
    data = B.torch_tar_bytes(pickle.dumps({}, 2), storages=pickle.dumps(-1, 2))
    assert "SH140" in rules(scan_one(B.write(tmp_path / "x.pt", data)))


def test_cut_legacy_record_that_only_imports_by_extension_code_is_judged(
        tmp_path: Path, fire: Any) -> None:
    """torch.load reads the record after the magic number with pickle.load: an EXT1 opcode
    imports the module the loading process registered under that code with copyreg, and
    the import runs before the record is found cut short. The scanner took a cut stream
    without a named import or call for trailing bytes (SH113, clean under permissive)."""
    marker = "legacy_ext_import"
    (tmp_path / "extmod").mkdir()
    (tmp_path / "extmod" / "marked_on_import.py").write_text(
        f"open({marker!r}, 'w').close()\nx = 1\n")
    setup = (f"import copyreg, sys; sys.path.insert(0, {str(tmp_path / 'extmod')!r}); "
             "copyreg.add_extension('marked_on_import', 'x', 1)")
    path = B.write(tmp_path / "model.pt", pickle.dumps(0x1950A86A20F9469CFC6C, 2)
                   + b"\x80\x02\x82\x01")
    assert fire([(path, "torch", setup)]) == {marker}

    report = scan_one(path, ScanOptions(block_severity=Severity.HIGH))
    assert report.verdict is Verdict.UNSAFE
    assert "SH103" in rules(report)


def test_legacy_protocol_record_past_the_opcode_budget_fails_closed(
        tmp_path: Path, fire: Any) -> None:
    """A protocol record of more opcodes than the file's analysis budget, which still ends
    in 1001: the scanner's reading stopped at the budget, took the record for trailing
    bytes (SH113, clean under permissive) and read no further, while torch.load went on
    to the object record and ran its payload."""
    marker = "legacy_protocol_budget"
    protocol = b"\x80\x02" + b"N0" * 2_600_000 + b"M\xe9\x03."
    path = B.write(tmp_path / "model.pt", pickle.dumps(0x1950A86A20F9469CFC6C, 2) + protocol
                   + pickle.dumps({}, 2) + B.os_system_p0(marker) + pickle.dumps([], 2))
    assert fire([(path, "torch")]) == {marker}

    report = scan_one(path, ScanOptions(block_severity=Severity.HIGH))
    assert report.verdict is Verdict.UNSAFE
    assert "SH191" in rules(report)
