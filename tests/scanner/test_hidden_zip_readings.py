"""Hidden zip archives the scanner must read as the loaders do, and container files read
from byte 0 by pickle._Unpickler.

A torch.package appended to an image, a PDF or a legacy torch tar is loaded by
``PackageImporter`` (miniz) however the scanner reads its directory: miniz ignores a zip64
end record whose signature is wrong (it uses the classic record) and reads a local header
only for an entry it opens. Each file here is first shown to run its marker under the real
loader; the scanner must then never call it clean. A directory that cannot be read at all
behind such a signature is a finding, never "no zip".
"""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import pytest

from safehub.findings import Verdict
from safehub.scan import ScanOptions, scan
from tests.scanner import _builders as B
from tests.scanner.conftest import rules, scan_one

torch_package = pytest.importorskip("torch.package")

PREFIXES = {
    "png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 17,
    "jpeg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    "pdf": b"%PDF-1.4\n",
    "torch-tar": B.torch_tar_bytes(pickle.dumps({"a": 1}, protocol=2)),
}


def _package(marker: str) -> bytes:
    """A torch.package whose pickle imports its module ``evil``, which drops ``marker``."""
    buf = io.BytesIO()
    with torch_package.PackageExporter(buf) as pe:
        pe.save_source_string("evil", f"open({marker!r}, 'w').write('x')\nclass X: pass\n")
        pe.save_binary("res", "obj.pkl", b"\x80\x02cevil\nX\n)\x81.")
    return buf.getvalue()


def _locate(z: bytes | bytearray) -> tuple[int, int, int]:
    """(classic end record, zip64 locator, zip64 record) offsets of torch's archive."""
    e = z.rfind(b"PK\x05\x06")
    loc, r64 = e - 20, e - 76
    assert z[loc:loc + 4] == b"PK\x06\x07" and z[r64 + 2:r64 + 4] == b"\x06\x06"
    return e, loc, r64


def _behind(prefix: bytes, z: bytes) -> bytearray:
    """``prefix + z`` with every offset of the archive made absolute (as miniz reads them)."""
    n = len(prefix)
    out = bytearray(prefix + z)
    e, loc, r64 = _locate(out)
    cd_size, cd_off = struct.unpack_from("<II", out, e + 12)
    struct.pack_into("<I", out, e + 16, cd_off + n)
    p = cd_off + n
    while p < cd_off + n + cd_size:
        nl, el, cl = struct.unpack_from("<HHH", out, p + 28)
        (off,) = struct.unpack_from("<I", out, p + 42)
        struct.pack_into("<I", out, p + 42, off + n)
        p += 46 + nl + el + cl
    (c64,) = struct.unpack_from("<Q", out, r64 + 48)
    struct.pack_into("<Q", out, r64 + 48, c64 + n)
    struct.pack_into("<Q", out, loc + 8, r64)
    return out


def _break_zip64(z: bytearray) -> bytearray:
    _, _, r64 = _locate(z)
    z[r64:r64 + 4] = b"XX\x06\x06"  # miniz: the locator's record is invalid -> classic record
    return z


def _decoy_entry(z: bytearray) -> bytearray:
    """One more central record whose local header offset points at non-header bytes."""
    e, loc, r64 = _locate(z)
    _, _, _, nd, nt, cs, co, _ = struct.unpack_from("<4sHHHHIIH", z, e)
    name = b"archive/zzz_decoy"
    rec = struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, 0, 0, 0,
                      len(name), 0, 0, 0, 0, 0, 0) + name
    out = z[:co + cs] + rec + z[co + cs:]
    k = len(rec)
    e, loc, r64 = e + k, loc + k, r64 + k
    struct.pack_into("<HHI", out, e + 8, nd + 1, nt + 1, cs + k)
    n1, n2, s64 = struct.unpack_from("<QQQ", out, r64 + 24)
    struct.pack_into("<QQQ", out, r64 + 24, n1 + 1, n2 + 1, s64 + k)
    struct.pack_into("<Q", out, loc + 8, r64)
    return out


BREAKS = {"zip64-record": _break_zip64, "decoy-entry": _decoy_entry,
          "both": lambda z: _decoy_entry(_break_zip64(z))}


@pytest.mark.parametrize("how", sorted(BREAKS))
@pytest.mark.parametrize("prefix", sorted(PREFIXES))
def test_package_miniz_reads_is_never_clean(prefix: str, how: str, tmp_path: Path,
                                            fire: object) -> None:
    data = BREAKS[how](_behind(PREFIXES[prefix], _package("pkg_ran")))
    path = B.write(tmp_path / "pytorch_model.bin", bytes(data))
    assert fire([(path, "torch-package")]) == {"pkg_ran"}  # type: ignore[operator]
    report = scan_one(path)
    assert report.verdict is Verdict.UNSAFE
    assert "SH121" in rules(report)
    # Inside a folder walk too, under a name that does not announce a model.
    walked = tmp_path / "walk"
    walked.mkdir()
    B.write(walked / "picture.dat2", bytes(data))
    folder = scan(walked, options=ScanOptions())
    assert [r.verdict for r in folder.files] == [Verdict.UNSAFE]


@pytest.mark.parametrize("prefix", ["png", "pdf", "torch-tar"])
def test_unreadable_directory_behind_any_format_is_a_finding(prefix: str,
                                                             tmp_path: Path) -> None:
    """A central directory that no reading parses (a record cut short): never 'no zip'."""
    data = _behind(PREFIXES[prefix], _package("pkg_ran"))
    e, _, _ = _locate(data)
    co = struct.unpack_from("<I", data, e + 16)[0]
    # The second record's signature broken: the first one is there, the directory is not.
    (nl, el, cl) = struct.unpack_from("<HHH", data, co + 28)
    second = co + 46 + nl + el + cl
    assert data[second:second + 4] == b"PK\x01\x02"
    data[second:second + 4] = b"PK\x01\x09"
    path = B.write(tmp_path / "f.bin", bytes(data))
    report = scan_one(path)
    assert report.verdict is not Verdict.CLEAN
    assert "SH110" in rules(report)
    walked = tmp_path / "walk"
    walked.mkdir()
    B.write(walked / "picture.dat2", bytes(data))
    walk = scan(walked, options=ScanOptions())
    assert not walk.skipped
    assert [r.verdict for r in walk.files] == [report.verdict]


def test_end_record_bytes_without_a_directory_stay_not_a_zip(tmp_path: Path) -> None:
    """An image that merely contains the end-record signature is still identified (SH176)."""
    data = PREFIXES["png"] + b"\x00" * 64 + struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 1, 1,
                                                         46, 8, 0)
    report = scan_one(B.write(tmp_path / "x.png", data))
    assert report.verdict is Verdict.CLEAN
    assert rules(report, blocking=False) == {"SH176"}


# pickle._Unpickler (joblib.load, dill) parses these text arguments; _pickle.c refuses them.
DIVERGENT = [b"F 1.0\n", b"F1.0 \n", b"F1_0.5\n"]


@pytest.mark.parametrize("head", DIVERGENT, ids=["space-before", "space-after", "underscore"])
def test_tar_member_name_read_by_the_python_unpickler(head: bytes, tmp_path: Path,
                                                      fire: object) -> None:
    payload = head + b"0" + B.global_op("posix", "system") + b"(S'touch tar_name_ran'\ntR."
    assert len(payload) < 100
    members = [(payload.decode("ascii"), b""),
               ("storages", pickle.dumps(0, protocol=2) + pickle.dumps([], protocol=2)),
               ("tensors", pickle.dumps(0, protocol=2)),
               ("pickle", pickle.dumps({"weights": [1, 2, 3]}, protocol=2))]
    path = B.write(tmp_path / "model.pt", B.tar_bytes(members))
    # torch.load reads a benign tar checkpoint; joblib.load runs the name's pickle.
    assert fire([(path, "torch")]) == set()  # type: ignore[operator]
    assert fire([(path, "joblib")]) == {"tar_name_ran"}  # type: ignore[operator]
    report = scan_one(path)
    assert report.verdict is Verdict.UNSAFE
    assert "SH100" in rules(report)
