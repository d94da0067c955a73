"""Files another format claims whose first bytes are also a compressor's magic.

joblib.load chooses its decompressor by the first bytes alone (``_detect_compressor``),
whatever format those bytes also begin. A safetensors header length, read as bytes, can
spell gzip's magic (``1f 8b 08 00 00 00 00 00`` is a header of 0x088b1f bytes) and the
gzip header's XFL byte can be the ``{`` that starts the JSON: joblib.load decompresses the
file and unpickles what comes out, while the scanner read it as safetensors only. With a
malformed JSON header that reading gave one medium finding, which a permissive policy
(blocking from high) passes: the file scanned clean and ran ``posix.system`` in joblib.
(Deflate data can also be written so that the JSON stays valid; the decompressed reading
is judged either way.)
"""

from __future__ import annotations

import gzip
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from safehub.findings import Verdict
from safehub.rules import Severity
from safehub.scan import ScanOptions
from tests.scanner import _builders as B
from tests.scanner.conftest import rules, scan_one

pytest.importorskip("joblib")

PERMISSIVE = ScanOptions(block_severity=Severity.HIGH)  # the permissive preset's threshold


def _safetensors_gzip(marker: str) -> bytes:
    """gzip of a pickle (stored, padded past the header length), XFL set to ``{``."""
    data = bytearray(gzip.compress(B.os_system_p0(marker) + b"\0" * 600_000,
                                   compresslevel=0, mtime=0))
    data[8] = ord("{")  # XFL: zlib ignores it
    assert int.from_bytes(data[:8], "little") == 0x088B1F <= len(data) - 8
    return bytes(data)


def test_safetensors_head_that_is_gzip_is_decompressed_and_judged(
        tmp_path: Path, fire: object) -> None:
    path = B.write(tmp_path / "model.safetensors", _safetensors_gzip("st_gzip"))
    assert "st_gzip" in fire([(path, "joblib")])  # type: ignore[operator]
    for options in (None, PERMISSIVE):
        report = scan_one(path, options)
        assert report.format == "safetensors"
        assert report.verdict is Verdict.UNSAFE
        assert {"SH114", "SH100"} <= rules(report), [f.message for f in report.findings]
    cli = subprocess.run([sys.executable, "-m", "safehub", "scan", "--policy", "permissive",
                          str(path)], capture_output=True, text=True, timeout=120, check=False)
    assert cli.returncode == 1, cli.stdout + cli.stderr
    assert "posix.system" in cli.stdout

def test_safetensors_whose_length_spells_zlib_magic_stays_clean(tmp_path: Path) -> None:
    """A header length whose bytes happen to start like zlib (1 file in 8192) is no
    polyglot when the bytes do not decompress: joblib.load stops before any opcode."""
    data = b"\x00" * 4
    header = json.dumps({"x": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}}).encode()
    n = 0x9C78  # little-endian bytes 78 9c: zlib's most common header
    path = B.write(tmp_path / "m.safetensors",
                   struct.pack("<Q", n) + header.ljust(n) + data)
    assert Path(path).read_bytes()[:2] == b"\x78\x9c"
    report = scan_one(path)
    assert report.verdict is Verdict.CLEAN, [f.message for f in report.findings]
    assert report.format == "safetensors"


def test_lzma_with_a_small_dictionary_is_read_as_joblib_reads_it(tmp_path: Path,
                                                                 fire: object) -> None:
    """joblib's lzma prefix is two bytes: a 4 KiB dictionary (``]\\x00\\x10\\x00\\x00``) is
    decompressed and unpickled like the default one, so it is scanned, not 'unknown'."""
    import lzma

    filters = [{"id": lzma.FILTER_LZMA1, "dict_size": 4096}]
    payload = lzma.compress(B.os_system_p0("small_dict"), format=lzma.FORMAT_ALONE,
                            filters=filters)
    assert payload[:5] == b"]\x00\x10\x00\x00"
    evil = B.write(tmp_path / "evil.joblib", payload)
    assert "small_dict" in fire([(evil, "joblib")])  # type: ignore[operator]
    report = scan_one(evil)
    assert report.verdict is Verdict.UNSAFE and "SH100" in rules(report)
    benign = B.write(tmp_path / "ok.joblib", lzma.compress(
        b"\x80\x02}q\x00.", format=lzma.FORMAT_ALONE, filters=filters))
    report = scan_one(benign)
    assert report.verdict is Verdict.CLEAN and "lzma" in report.format
