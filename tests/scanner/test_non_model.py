"""A file named directly that is positively not a model (issue 10, round 2).

A PNG starts with 0x89 (NEWFALSE) and ``P`` (PERSID), so a pickle probe parses a few
opcodes before 0x1a ends it, and the scanner called ``safehub scan photo.png`` UNSAFE.
What the real loaders do with it decides the verdict: the oracle runs every one of them
(the C and Python unpicklers, ``torch.load`` itself, ``numpy.load``, ``joblib.load``) on
real PNGs (zlib-compressed data, CRCs) and none resolves a name or calls anything, and
``fire`` shows none runs a payload placed after the signature. So a directly named file
whose signature ends every loader, with no tar archive and no zip directory in it, is
CLEAN with an informational SH176 that says what it is. Polyglots stay caught: a torch
legacy tar whose first member name spells the PNG signature, a PNG with a zip appended.
"""

from __future__ import annotations

import io
import random
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from safehub.cli import main
from safehub.findings import Verdict
from tests.scanner import _builders as B
from tests.scanner.conftest import rules, scan_one
from tests.scanner.oracle import FILE_READERS, PICKLE_READERS, run_real, scan_bytes
from tests.scanner.oracle.gen import legacy_stream

Fire = Callable[..., set[str]]
SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png(width: int, height: int, seed: int = 0, extra: bytes = b"") -> bytes:
    """A real PNG (8-bit RGB, filter 0 rows, zlib IDAT, CRCs); ``extra`` goes in a tEXt."""
    rng = random.Random(seed)
    rows = b"".join(b"\0" + bytes(rng.randrange(256) for _ in range(3 * width))
                    for _ in range(height))
    chunks = [_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))]
    if extra:
        chunks.append(_chunk(b"tEXt", b"Comment\0" + extra))
    chunks += [_chunk(b"IDAT", zlib.compress(rows)), _chunk(b"IEND", b"")]
    return SIGNATURE + b"".join(chunks)


def _check_png(data: bytes) -> None:
    """Our encoder's output decodes (signature, CRCs, zlib) as a PNG reader checks it."""
    assert data.startswith(SIGNATURE)
    pos = len(SIGNATURE)
    kinds = []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        if kind == b"IDAT":
            zlib.decompress(body)
        kinds.append(kind)
        pos += 12 + length
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND"


_PAYLOAD = B.os_system_p0("pngpayload")
PNGS = [png(1, 1), png(16, 16, 1), png(64, 3, 2), png(8, 8, 3, extra=_PAYLOAD),
        png(4, 4, 4) + _PAYLOAD, png(4, 4, 5) + legacy_stream(random.Random(0), _PAYLOAD)]


def test_no_real_loader_gets_past_a_png_signature() -> None:
    """The ground truth: every reader, on real PNGs and on PNGs followed by a pickle
    payload (in a chunk, after IEND, as a torch legacy raw stream), resolves nothing."""
    for data in PNGS:
        _check_png(data.split(b"IEND\xaeB`\x82")[0] + b"IEND\xaeB`\x82")
    readers = [*PICKLE_READERS, "c_file_all", *FILE_READERS]
    items = [(reader, data) for data in PNGS for reader in readers]
    for (reader, _data), real in zip(items, run_real(items), strict=True):
        assert not real.crashed, (reader, real.crashed)
        # The stream readers stub a persistent_load (as torch's zip reader has one), so
        # PERSID "NG\r" reaches it; no loader that reads a whole file from byte 0 has one
        # there (torch's legacy reader installs it only for the object, after the magic
        # number), and 0x1a ends the stream either way.
        assert [n for n in real.names if n != "<persistent_load>."] == [], (reader, real.names)
        assert all(not r.ok for r in real.records), (reader, real.records)


@pytest.mark.parametrize("index", range(len(PNGS)))
def test_png_named_directly_is_clean_and_says_what_it_is(index: int) -> None:
    report = scan_bytes(PNGS[index])
    assert report.verdict is Verdict.CLEAN, [(f.rule_id, f.message) for f in report.findings]
    assert report.format == "non-model"
    assert [f.rule_id for f in report.findings] == ["SH176"]
    assert "PNG image" in report.findings[0].message


def test_payload_after_a_png_signature_never_runs(tmp_path: Path, fire: Fire) -> None:
    cases = []
    for n, data in enumerate(PNGS[3:]):
        path = tmp_path / f"p{n}.png"
        path.write_bytes(data)
        cases += [(path, loader) for loader in ("pickle", "pickle-all", "torch", "numpy",
                                                "joblib")]
    assert fire(cases) == set()


def test_cli_scan_photo_png_exits_0(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    path.write_bytes(png(32, 32, 7))
    assert main(["scan", str(path)]) == 0
    report = scan_one(path)
    assert report.verdict is Verdict.CLEAN and rules(report, blocking=False) == {"SH176"}


def _png_named_tar(payload: bytes) -> bytes:
    """A legacy torch tar whose first member's name is the PNG signature and IHDR."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT,
                      encoding="latin-1") as tf:
        # torch extracts "storages" first and loads its first pickle: the payload.
        for name, data in ((SIGNATURE.decode("latin-1"), b"x"), ("storages", payload)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_png_signature_on_a_legacy_tar_is_still_caught(tmp_path: Path, fire: Fire) -> None:
    data = _png_named_tar(B.os_system_p0("pngtar"))
    assert data.startswith(SIGNATURE)
    (real,) = run_real([("torch_legacy", _png_named_tar(B.os_system_p0("x")))])
    assert real.names and real.names[0] == "posix.system"
    path = tmp_path / "photo.png"
    path.write_bytes(data)
    assert fire([(path, "torch")]) == {"pngtar"}
    report = scan_one(path)
    assert report.verdict is Verdict.UNSAFE
    assert "SH176" not in rules(report, blocking=False)


def test_png_with_a_zip_appended_is_still_caught() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", B.os_system_p0("pngzip"))
    report = scan_bytes(png(4, 4) + buf.getvalue())
    assert report.verdict is Verdict.UNSAFE
    assert "SH114" in rules(report)
