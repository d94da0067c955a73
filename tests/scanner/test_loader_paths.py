"""Bypasses of the scanner's model of the loaders' container paths (issue 10, second review).

Each test builds the attacker's file, shows with ``fire`` that the real loader runs its
payload, and that the scanner now blocks it:

- a legacy torch tar whose first member *name* spells the PNG signature (folder walks
  skipped it as an image before asking tarfile);
- sparse ``storages`` members, which torch extracts to disk (``tar.extract``: segments
  written in order, the last wins) instead of reading them, or whose extraction fails so
  that torch re-reads the file as raw legacy pickles from byte 0;
- torch's raw fallback on a tar whose extraction fails for any reason (all five pickles);
- a joblib NumpyArrayWrapper BUILT twice (its attributes accumulate as ``__dict__.update``).
"""

from __future__ import annotations

import io
import pickle
import tarfile
from collections.abc import Callable
from pathlib import Path

from safehub.findings import Verdict
from safehub.scan import scan
from tests.scanner import _builders as B
from tests.scanner.conftest import rules, scan_one

Fire = Callable[..., set[str]]

_LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little") + b"."
_LEGACY_PROTOCOL = b"\x80\x02M\xe9\x03."


def _png_named_tar(payload: bytes) -> bytes:
    """A legacy torch tar whose first member's name begins with the PNG signature."""
    png_name = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR".decode("latin-1")
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT,
                      encoding="latin-1") as tar:
        for name, data in ((png_name, b"x"), ("storages", payload)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _sparse_storages(segments: list[tuple[int, int]], stored: bytes, realsize: int) -> bytes:
    """A PAX 1.0 sparse ``storages`` member: map of (offset, length), then the data."""
    sparse_map = b"%d\n" % len(segments) + b"".join(b"%d\n%d\n" % s for s in segments)
    sparse_map += b"\0" * (-len(sparse_map) % 512)
    data = sparse_map + stored
    info = tarfile.TarInfo("GNUSparseFile.0/storages")
    info.size = len(data)
    info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                        "GNU.sparse.name": "storages", "GNU.sparse.realsize": str(realsize)}
    block = info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")
    return block + data + b"\0" * (-len(data) % 512)


def _benign_same_length(length: int) -> bytes:
    """A storages stream (count 0, empty views list) padded to ``length`` bytes."""
    tail = b"0K\x00.]."
    pad = length - 5 - len(tail)
    return b"X" + pad.to_bytes(4, "little") + b"A" * pad + tail


def test_png_named_tar_in_a_folder_is_scanned(tmp_path: Path, fire: Fire) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    path = B.write(folder / "best.th", _png_named_tar(B.os_system_p0("png_tar")))
    assert Path(path).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert fire([(path, "torch")]) == {"png_tar"}
    report = scan(folder)
    assert [Path(f.path).name for f in report.files] == ["best.th"]
    assert report.files[0].verdict is Verdict.UNSAFE
    assert "SH100" in rules(report.files[0])
    assert not report.skipped


def test_sparse_overlapping_storages_block(tmp_path: Path, fire: Fire) -> None:
    """tarfile.extractfile returns the first of two overlapping segments (benign); torch's
    tar.extract writes both, so the second (the payload) is what torch reads."""
    evil = B.os_system_p0("sparse_overlap")
    good = _benign_same_length(len(evil))
    n = len(evil)
    member = _sparse_storages([(0, n), (0, n)], good + evil, n)
    path = B.write(tmp_path / "overlap.pt", member + b"\0" * 1024)
    with tarfile.open(path) as tar:  # the scanner's old reading: benign
        reader = tar.extractfile("storages")
        assert reader is not None and reader.read() == good
    assert fire([(path, "torch")]) == {"sparse_overlap"}
    report = scan_one(path)
    assert report.verdict is Verdict.UNSAFE
    assert "SH161" in rules(report)


def _fallback_name(payload: bytes) -> str:
    """A first member name torch's raw reader runs: magic, protocol, sys info, object."""
    name = _LEGACY_MAGIC + _LEGACY_PROTOCOL + b"}." + payload + b"]."
    assert len(name) < 100 and b"\0" not in name
    return name.decode("latin-1")


def test_sparse_map_past_the_end_falls_back_to_raw_pickles(tmp_path: Path, fire: Fire) -> None:
    """A segment past the member makes tar.extract raise ReadError: torch then reads the
    file from byte 0 as consecutive legacy pickles, the payload being the fourth."""
    head = tarfile.TarInfo(_fallback_name(B.os_system_p0("tar_fallback")))
    data = head.tobuf(format=tarfile.USTAR_FORMAT, encoding="latin-1", errors="strict")
    storages = pickle.dumps(0, 2) + pickle.dumps([], 2)
    n = len(storages)
    data += _sparse_storages([(0, n), (n + 4096, 5000)], storages, n) + b"\0" * 1024
    path = B.write(tmp_path / "fallback.pt", data)
    assert fire([(path, "torch")]) == {"tar_fallback"}
    report = scan_one(path)
    assert report.verdict is Verdict.UNSAFE
    assert {"SH161", "SH100"} <= rules(report)


def test_failed_extraction_is_judged_as_the_raw_fallback(tmp_path: Path, fire: Fire) -> None:
    """Without any sparse member: a truncated ``storages`` member also makes tar.extract
    fail, and the raw reading from byte 0 (all five pickles, not only the first) is judged."""
    head = tarfile.TarInfo(_fallback_name(B.os_system_p0("truncated_fallback")))
    data = head.tobuf(format=tarfile.USTAR_FORMAT, encoding="latin-1", errors="strict")
    info = tarfile.TarInfo("storages")
    info.size = 4096
    data += info.tobuf(format=tarfile.USTAR_FORMAT) + pickle.dumps(0, 2)
    path = B.write(tmp_path / "truncated.pt", data)
    assert fire([(path, "torch")]) == {"truncated_fallback"}
    report = scan_one(path)
    assert report.verdict is Verdict.UNSAFE
    assert "SH100" in rules(report)
    assert "SH161" not in rules(report, blocking=False)


def test_real_legacy_tar_stays_clean(tmp_path: Path) -> None:
    path = B.write(tmp_path / "old.pt", B.torch_tar_bytes(pickle.dumps({"w": 1}, 2)))
    report = scan_one(path)
    assert report.verdict is Verdict.CLEAN, report.findings


def _joblib_double_build(marker: str) -> bytes:
    """joblib reads the second array with the alignment key of the FIRST BUILD (a pad
    byte first); a scanner sizing it from the second BUILD alone reads one byte short."""
    def s(x: str) -> bytes:
        return b"\x8c" + bytes([len(x)]) + x.encode()

    dtype = b"cnumpy\ndtype\n(" + s("u1") + b"\x89\x88tR"
    p = b"\x80\x02cjoblib.numpy_pickle\nNumpyArrayWrapper\n)\x81q\x00"
    p += b"}(" + s("subclass") + b"cnumpy\nndarray\n" + s("shape") + b"K\x00\x85"
    p += s("order") + s("C") + s("dtype") + dtype + s("allow_mmap") + b"\x89"
    p += s("numpy_array_alignment_bytes") + b"K\x10" + b"ub"
    p += b"\x00"  # array 1: padding length 0, no data
    p += b"0h\x00"  # POP array 1, GET the wrapper
    p += b"}(" + s("shape") + b"K\x04\x85" + s("dtype") + dtype + b"ub"  # BUILD 2
    payload = B.os_system_p0(marker)[1:]  # after the "c" that ends the array bytes
    assert len(payload) <= 0x63
    p += b"\x00" + b"AAA" + b"C" + b"c" + payload.ljust(0x63, b"N")
    return p + b"0."


def test_joblib_wrapper_built_twice_keeps_first_attributes(tmp_path: Path,
                                                           fire: Fire) -> None:
    path = B.write(tmp_path / "twice.joblib", _joblib_double_build("joblib_rebuild"))
    assert fire([(path, "joblib")]) == {"joblib_rebuild"}
    report = scan_one(path)
    assert report.verdict is Verdict.UNSAFE
    assert "SH100" in rules(report)


def test_tar_spelling_a_late_signature_is_never_skipped(tmp_path: Path) -> None:
    """Whatever tarfile opens is not skipped as an image, even when the scan found no torch
    members (here a first member named like a GIF header)."""
    folder = tmp_path / "f"
    folder.mkdir()
    B.write(folder / "image.gif", B.tar_bytes([("GIF89a-frame", b"x")]))
    report = scan(folder)
    assert not report.skipped
    assert [Path(f.path).name for f in report.files] == ["image.gif"]
