"""joblib dumps: arrays inline in the pickle, object arrays as nested streams, compression."""

from __future__ import annotations

import io
import os
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest

from safehub.findings import Verdict
from safehub.rules import Severity
from safehub.scan import ScanOptions
from tests.scanner import _builders as B
from tests.scanner.conftest import rules, scan_one

WRAPPER = ScanOptions(allowed_globals=("joblib.numpy_pickle.NumpyArrayWrapper",))

OBJ: dict[str, Any] = {
    "floats": np.random.default_rng(0).random(1000),
    "ints": np.arange(12, dtype="i2").reshape(3, 4),
    "fortran": np.asfortranarray(np.ones((3, 2))), "strings": np.array(["ab", "c"]),
    "bytes": np.array([b"xy"]), "structured": np.zeros(2, [("a", "i4"), ("b", "f8")]),
    "objects": np.array([1, "two", None], dtype=object), "datetimes": np.array(["2020"], "M8[D]"),
    "nested": {"list": [np.ones(2), (np.zeros(1, "c8"),)]}, "scalar": 3.5, "empty": np.zeros(0),
    "struct_obj": np.zeros(2, [("o", "O"), ("f", "f4")]),
}

COMPRESS = [0, ("zlib", 3), ("gzip", 3), ("bz2", 3), ("lzma", 3), ("xz", 3)]


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("compress", COMPRESS, ids=lambda c: str(c[0] if c else "raw"))
def test_joblib_dumps_are_clean(compress: Any, protocol: int, tmp_path: Path) -> None:
    path = tmp_path / "d.joblib"
    joblib.dump(OBJ, path, compress=compress, protocol=protocol)
    report = scan_one(path)
    assert report.verdict is Verdict.CLEAN, [f.message for f in report.findings]
    assert report.format.startswith("joblib")
    # The wrapper is a harmless data class (SH175): a strict threshold blocks it until the
    # policy allows it by name.
    strict = replace(WRAPPER, allowed_globals=(), block_severity=Severity.INFO)
    assert scan_one(path, strict).verdict is Verdict.UNSAFE
    assert scan_one(path, replace(WRAPPER, block_severity=Severity.INFO)).verdict is Verdict.CLEAN


def test_joblib_without_arrays_needs_no_policy(tmp_path: Path) -> None:
    path = tmp_path / "cfg.joblib"
    joblib.dump({"alpha": 0.1, "layers": [3, 4]}, path)
    assert scan_one(path).verdict is Verdict.CLEAN


def test_legacy_zf_container_is_read(tmp_path: Path) -> None:
    data = b"\x80\x02}q\x00."
    path = B.write(tmp_path / "old.pkl", b"ZF0x" + f"{len(data):x}".ljust(17).encode()
                   + zlib.compress(data))
    report = scan_one(path)
    assert report.verdict is Verdict.CLEAN and "joblib-zlib-legacy" in report.format


def test_concatenated_zlib_streams_are_one_stream(tmp_path: Path) -> None:
    data = joblib_bytes({"a": 1})
    half = len(data) // 2
    path = B.write(tmp_path / "c.joblib", zlib.compress(data[:half]) + zlib.compress(data[half:]))
    assert scan_one(path).verdict is Verdict.CLEAN


def joblib_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    joblib.dump(obj, buf)
    return buf.getvalue()


def test_corrupt_compressed_stream(tmp_path: Path) -> None:
    data = bytearray(zlib.compress(joblib_bytes({"a": list(range(2000))})))
    data[len(data) // 2] ^= 0xFF
    report = scan_one(B.write(tmp_path / "bad.joblib", bytes(data)))
    assert report.verdict in (Verdict.UNSAFE, Verdict.UNKNOWN)


def test_undeterminable_array_size_is_a_finding(tmp_path: Path) -> None:
    data = (b"\x80\x02" + B.global_op("joblib.numpy_pickle", "NumpyArrayWrapper") + b")\x81"
            + b"}(" + B.string_op("shape") + b"N" + b"ub" + b".")
    report = scan_one(B.write(tmp_path / "u.joblib", data), WRAPPER)
    assert report.verdict is Verdict.UNSAFE and "SH110" in rules(report)


def test_decompression_bomb_stops_at_the_record_limit(tmp_path: Path) -> None:
    import gzip

    head = b"\x80\x04\x8e" + (1 << 33).to_bytes(8, "little")  # 8 GiB of bytes follow
    path = tmp_path / "bomb.joblib"
    with gzip.open(path, "wb", compresslevel=1) as fh:
        fh.write(head)
        zeros = b"\0" * (1 << 22)
        for _ in range(16):  # 64 MiB of them are really there
            fh.write(zeros)
    assert os.path.getsize(path) < 1 << 20
    report = scan_one(path, ScanOptions(max_record_size=8 << 20))
    assert report.verdict is Verdict.UNSAFE
    assert rules(report) & {"SH191", "SH111"}


def _array_hiding_legacy_streams(marker: str, *, system_info: bytes = b"") -> bytes:
    """A joblib dump (protocol 2) whose one uint8 array holds, from its padding byte on,
    what plain ``pickle.load`` reads after the wrapper's BUILD: POPs, torch's legacy magic
    number and STOP, then the protocol, system-info and object pickles (the object runs
    the payload) and the storage keys. joblib skips those bytes as padding and data."""
    import pickle
    import struct

    magic = 0x1950A86A20F9469CFC6C
    plain = (b"00\x8a\x0a" + magic.to_bytes(10, "little") + b"." + pickle.dumps(1001, 2)
             + (system_info or pickle.dumps({}, 2)) + B.os_system_p0(marker)
             + pickle.dumps([], 2))
    size = max(len(plain) + 8, 1 << 17)  # a BININT shape, before and after the edit
    buf = io.BytesIO()
    joblib.dump({"a": np.full(size, 0xAB, np.uint8)}, buf, protocol=2)
    data = buf.getvalue()
    data_at = data.index(b"\xab" * size)
    pad_at = data.rindex(b"K\x10ub", 0, data_at) + 4  # after the wrapper's BUILD
    padding = 0x30  # the padding-length byte joblib reads is plain pickle's POP
    region = (bytes([padding]) + plain).ljust(data_at + size - pad_at, b"\xab")
    shape = b"shapeq\x07J"
    assert data.count(shape + struct.pack("<i", size)) == 1
    data = data.replace(shape + struct.pack("<i", size),
                        shape + struct.pack("<i", len(region) - 1 - padding))
    return data[:pad_at] + region + data[data_at + size:]


def test_array_bytes_hiding_torch_legacy_streams_are_judged(
        tmp_path: Path, fire: Any) -> None:
    """torch.load reads a non-zip file as its legacy record sequence with plain pickle.load:
    where joblib skips array bytes, it reads them as opcodes. A STOP in those bytes ended
    torch's first record (the magic number), and the protocol, system info and object
    records followed, inside what the scanner skipped as array data: it reported the file
    clean under every policy while torch.load ran the object's payload."""
    pytest.importorskip("torch")
    marker = "joblib_array_legacy"
    path = B.write(tmp_path / "model.pkl", _array_hiding_legacy_streams(marker))
    assert fire([(path, "torch"), (path, "joblib")]) == {marker}

    report = scan_one(path, replace(WRAPPER, block_severity=Severity.HIGH))
    assert report.verdict is Verdict.UNSAFE
    assert {"SH100", "SH114"} <= rules(report)


def test_array_bytes_hiding_legacy_streams_past_the_opcode_budget_fail_closed(
        tmp_path: Path, fire: Any) -> None:
    """The same file, with a system-info record of more opcodes than the file's analysis
    budget: the reading of the array bytes as torch's records stopped at the budget
    without a word, and the object record after it ran under a clean verdict."""
    pytest.importorskip("torch")
    marker = "joblib_array_budget"
    filler = b"\x80\x02" + b"N0" * 2_600_000 + b"}."
    path = B.write(tmp_path / "model.pkl",
                   _array_hiding_legacy_streams(marker, system_info=filler))
    assert fire([(path, "torch")]) == {marker}

    report = scan_one(path, replace(WRAPPER, block_severity=Severity.HIGH))
    assert report.verdict is Verdict.UNSAFE
    assert "SH191" in rules(report)
