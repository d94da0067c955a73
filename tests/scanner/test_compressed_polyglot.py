"""Files another format claims whose first bytes are also a compressor's magic.

joblib.load chooses its decompressor by the first bytes alone (``_detect_compressor``),
whatever format those bytes also begin. A safetensors file's header length, read as
bytes, can spell gzip's magic (``1f 8b 08 00 ...`` is a header of 0x088b1f bytes), and
its JSON header can carry deflate data: joblib.load then decompresses the file and
unpickles what comes out, while the scanner read a valid safetensors file.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from safehub.findings import Verdict
from tests.scanner import _builders as B
from tests.scanner.conftest import rules, scan_one

pytest.importorskip("joblib")
st = pytest.importorskip("safetensors.numpy")

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
