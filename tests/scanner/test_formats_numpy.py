"""numpy .npy files: real arrays pass, object arrays are judged as pickles, bad headers fail."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest

from safehub.findings import Verdict
from safehub.rules import Severity
from safehub.scan import ScanOptions
from tests.scanner import _builders as B
from tests.scanner.conftest import rules, scan_one

ARRAYS = {
    "f2": np.ones(5, "f2"), "f4": np.ones((2, 3), "<f4"), "f8_big_endian": np.ones(3, ">f8"),
    "i1": np.arange(5, dtype="i1"), "u8": np.arange(5, dtype="u8"), "b1": np.ones(3, bool),
    "c16": np.ones(2, "c16"), "datetime": np.array(["2020-01-01"], "M8[ns]"),
    "timedelta": np.array([1], "m8[s]"), "unicode": np.array(["ab", "cde"]),
    "bytes": np.array([b"ab"]), "void": np.zeros(2, "V7"),
    "structured": np.zeros(3, [("a", "<i4"), ("b", "<f8", (2,)), ("c", "S3")]),
    "fortran": np.asfortranarray(np.ones((3, 4))), "scalar": np.array(3.5),
    "empty": np.zeros((0, 5)), "many_fields": np.zeros(1, [(f"f{i}", "<i2") for i in range(600)]),
    "object_plain": np.array([1, "a", None, 2.5], dtype=object),
}


@pytest.mark.parametrize("name", sorted(ARRAYS))
def test_real_arrays_are_clean(name: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.npy"
    np.save(path, ARRAYS[name], allow_pickle=True)
    report = scan_one(path)
    assert report.verdict is Verdict.CLEAN, [f.message for f in report.findings]
    assert report.format == "npy"


def test_object_array_is_reported_and_its_pickle_judged(tmp_path: Path) -> None:
    path = tmp_path / "o.npy"
    arr = np.empty(1, dtype=object)
    arr[0] = range(3)
    np.save(path, arr, allow_pickle=True)
    report = scan_one(path)
    assert "SH130" in {f.rule_id for f in report.findings}
    assert report.verdict is Verdict.UNSAFE and "SH101" in rules(report)
    allowed = scan_one(path, ScanOptions(allowed_globals=("builtins.range",)))
    assert allowed.verdict is Verdict.CLEAN


HEADER = "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }"


@pytest.mark.parametrize(("name", "data", "rule"), [
    ("not_a_literal", B.npy_bytes("{'descr': __import__('os')}", b""), "SH131"),
    ("missing_key", B.npy_bytes("{'descr': '<f8', 'shape': (2,)}", b""), "SH131"),
    ("extra_key", B.npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (), 'x': 1}",
                              b"\0" * 8), "SH131"),
    ("negative_shape", B.npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (-1,)}",
                                   b""), "SH131"),
    ("unknown_dtype", B.npy_bytes("{'descr': 'object', 'fortran_order': False, 'shape': (1,)}",
                                  b""), "SH131"),
    ("bad_version", b"\x93NUMPY\x09\x00" + b"\0" * 20, "SH131"),
    ("huge_header_length", b"\x93NUMPY\x02\x00\xff\xff\xff\x7f" + b"{", "SH131"),
    ("truncated_data", B.npy_bytes(HEADER, b"\0" * 15), "SH111"),
    ("trailing_data", B.npy_bytes(HEADER, b"\0" * 16 + b"extra"), "SH113"),
    ("truncated_header", b"\x93NUMPY\x01\x00\x40\x00{'descr'", "SH111"),
])
def test_malformed_npy(name: str, data: bytes, rule: str, tmp_path: Path) -> None:
    report = scan_one(B.write(tmp_path / f"{name}.npy", data))
    assert report.verdict is Verdict.UNSAFE
    assert rule in rules(report)


def test_trailing_stream_after_object_pickle(tmp_path: Path) -> None:
    buf = io.BytesIO()
    np.save(buf, np.array([1, 2], dtype=object), allow_pickle=True)
    path = B.write(tmp_path / "t.npy", buf.getvalue() + B.os_system_p0("x"))
    assert "SH113" in rules(scan_one(path))


def test_header_versions_2_and_3(tmp_path: Path) -> None:
    for version in (2, 3):
        path = B.write(tmp_path / f"v{version}.npy", B.npy_bytes(HEADER, b"\0" * 16,
                                                                 version=version))
        assert np.load(path).shape == (2,)
        assert scan_one(path).verdict is Verdict.CLEAN


def test_numpy_real_world_test_data(tmp_path: Path) -> None:
    """numpy ships .npy files in its test data; the numeric ones are clean."""
    data = Path(np.__file__).parent / "lib" / "tests" / "data"
    files = sorted(p for p in data.glob("*.npy") if os.path.getsize(p) < 1 << 20)
    if not files:
        pytest.skip("numpy test data not installed")
    for path in files:
        report = scan_one(path)
        assert report.verdict in (Verdict.CLEAN, Verdict.UNSAFE), path
        if report.verdict is Verdict.UNSAFE:  # object arrays of Python 2 or 3 objects
            assert "SH130" in {f.rule_id for f in report.findings}, path


def test_npz_keys_that_differ_only_in_case_are_clean(tmp_path: Path) -> None:
    """numpy.savez(w=..., W=...) writes w.npy and W.npy: two arrays to zipfile (numpy),
    which matches names exactly. Only miniz (torch) folds case, and torch reads an archive
    only through its .pkl records, which an npz has none of; the pair was SH115."""
    path = tmp_path / "weights.npz"
    np.savez(path, w=np.ones(2), W=np.zeros(3))
    with np.load(path, allow_pickle=False) as loaded:
        assert sorted(loaded.files) == ["W", "w"] and loaded["W"].shape == (3,)
    report = scan_one(path)
    assert report.verdict is Verdict.CLEAN, [f.message for f in report.findings]


@pytest.mark.parametrize("names", [
    ("x.npy", "x.npy"),  # zipfile keeps the last, miniz either
    ("x.npy\0a", "x.npy\0b"),  # zipfile cuts a name at its NUL: the same name twice
    ("a.npy", "A.npy", "archive/data.pkl"),  # a .pkl: torch reads it, and folds case
], ids=["exact", "nul", "case-with-pkl"])
def test_npz_names_a_reader_takes_for_one_stay_flagged(names: tuple[str, ...],
                                                       tmp_path: Path) -> None:
    plain = io.BytesIO()
    np.save(plain, np.ones(2))
    members = [B.ZipMember(n, plain.getvalue() if n.endswith("npy") or "\0" in n
                           else b"\x80\x02}q\x00.") for n in names]
    path = tmp_path / "w.npz"
    path.write_bytes(B.build_zip(members).data)
    report = scan_one(path)
    assert "SH115" in rules(report) and report.verdict is Verdict.UNSAFE


def _appended(*arrays: object) -> io.BytesIO:
    buf = io.BytesIO()
    for arr in arrays:
        np.save(buf, arr, allow_pickle=True)
    return buf


def test_arrays_appended_to_one_file_are_clean(tmp_path: Path) -> None:
    """numpy.save to an open file appends, and numpy.load reads one array per call (numpy's
    documented way to keep several arrays in one file). Every array after the first was
    SH113 'bytes follow the array data': the file scanned UNSAFE."""
    arrays = [np.ones(3), np.arange(4, dtype="<i2").reshape(2, 2), np.array(["ab"]),
              np.zeros((0, 2)), np.array(2.5)]
    path = tmp_path / "several.npy"
    path.write_bytes(_appended(*arrays).getvalue())
    with path.open("rb") as f:
        for arr in arrays:
            assert np.array_equal(np.load(f, allow_pickle=False), arr)
    report = scan_one(path)
    assert report.verdict is Verdict.CLEAN, [f.message for f in report.findings]


class _Marker:
    def __reduce__(self) -> tuple[object, ...]:
        return (os.system, ("true",))


@pytest.mark.parametrize(("tail", "rule"), [
    (_appended(np.array([_Marker()], dtype=object)).getvalue(), "SH100"),  # judged as read
    (__import__("pickle").dumps(_Marker()), "SH113"),  # numpy.load would unpickle it
    (b"junk", "SH113"),
    (b"\x93NUMPY", "SH111"),
], ids=["object-array", "pickle", "junk", "bare-magic"])
def test_what_follows_appended_arrays_is_still_judged(tail: bytes, rule: str,
                                                       tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    path.write_bytes(_appended(np.ones(2), np.ones(3)).getvalue() + tail)
    report = scan_one(path)
    assert report.verdict is Verdict.UNSAFE and rule in rules(report), report.findings


def test_pickle_after_an_array_blocks_under_every_policy(
        tmp_path: Path, fire: object) -> None:
    """numpy.load(f, allow_pickle=True) called again on the same open file unpickles what
    follows the array: the payload ran, and its only finding was SH113 (medium), which the
    permissive policy lets through."""
    path = tmp_path / "x.npy"
    path.write_bytes(_appended(np.ones(2)).getvalue()
                     + B.os_system_p0(B.marker_cmd("npy_then_pickle")))
    setup = ("import numpy as np\nf = open(path, 'rb')\nnp.load(f)\n"
             "np.load(f, allow_pickle=True)")
    assert "npy_then_pickle" in fire([(path, "numpy", setup)])  # type: ignore[operator]
    report = scan_one(path, ScanOptions(block_severity=Severity.HIGH))
    assert report.verdict is Verdict.UNSAFE and "SH100" in rules(report)
