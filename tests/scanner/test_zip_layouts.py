"""Zip layouts where the scanner and the loaders' own zip readers could part ways.

Each test builds the file, shows with the real loader that its payload runs (``fire``) or
that it reads other bytes than those a reading of the archive gives, and pins that the
scan blocks it under the permissive policy too (which lets findings below HIGH through).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from safehub.findings import Verdict
from safehub.rules import Severity
from safehub.scan import ScanOptions
from tests.scanner import _builders as B
from tests.scanner.conftest import rules, scan_one

_PERMISSIVE = Severity.HIGH  # the permissive policy's block_severity


def _torch_zip(marker: str, *, suffix: bytes = b"", storage: int = 100_000) -> bytes:
    """A torch checkpoint whose data.pkl runs the payload, with a storage record of
    ``storage`` bytes and ``suffix`` after the end record."""
    members = [m for m in B.torch_zip_members({}) if not m.name.endswith("data.pkl")]
    members.insert(0, B.ZipMember("archive/data.pkl", B.os_system_p0(marker)))
    members.append(B.ZipMember("archive/data/0", b"\1" * storage))
    return B.build_zip(members, suffix=suffix).data


@pytest.mark.parametrize("after", [65536, 66000, 69562])
def test_end_record_farther_back_than_a_comment_reaches_is_torchs(
        after: int, tmp_path: Path, fire: Callable[..., set[str]]) -> None:
    """miniz searches for the end record in 4 KiB blocks and gives up only after a block
    that starts 65557 bytes or more from the end: it finds a record followed by up to
    69562 bytes. The scanner searched the last 65557 bytes only, found no end record,
    reported SH111 (clean under permissive) and analyzed nothing, while torch.load ran
    data.pkl."""
    marker = f"eocd_reach_{after}"
    path = B.write(tmp_path / "model.pt", _torch_zip(marker, suffix=b"\0" * after))
    assert fire([(path, "torch")]) == {marker}

    report = scan_one(path, ScanOptions(block_severity=_PERMISSIVE))
    assert report.verdict is Verdict.UNSAFE
    assert "SH100" in rules(report)


def test_end_record_one_byte_past_the_longest_comment_is_numpys(
        tmp_path: Path, fire: Callable[..., set[str]]) -> None:
    """zipfile (numpy.load) searches the last 22 + 65536 bytes: one more than a maximal
    comment allows. An end record with a full comment and one byte after it was found by
    numpy and not by the scanner."""
    pytest.importorskip("numpy")
    objects = B.npy_bytes("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }",
                          B.call_prefix("eocd_reach_numpy") + b"N.")
    data = B.build_zip([B.ZipMember("a.npy", objects)], comment=b"\0" * 0xFFFF,
                       suffix=b"\0").data
    path = B.write(tmp_path / "arrays.npz", data)
    assert fire([(path, "numpy")]) == {"eocd_reach_numpy"}

    report = scan_one(path, ScanOptions(block_severity=_PERMISSIVE))
    assert report.verdict is Verdict.UNSAFE
    assert "SH100" in rules(report)


def _directory_data_pkl(marker: str, size: int = 200_000) -> tuple[bytes, bytes]:
    """A torch checkpoint whose data.pkl (a harmless string pickle of ``size`` bytes) is
    marked a directory by its DOS attribute, and whose ``.data/serialization_id`` record
    (read and freed by torch before data.pkl) holds the payload behind a sled of NONE
    opcodes. Returns the file and data.pkl's bytes."""
    data_pkl = b"\x80\x02X" + struct.pack("<I", size - 8) + b"a" * (size - 8) + b"."
    payload = B.os_system_p0(marker)
    hidden = (b"N" * (size - 300) + payload).ljust(size, b"N")
    members = [m for m in B.torch_zip_members({})
               if not m.name.endswith(("data.pkl", "serialization_id"))]
    members.insert(0, B.ZipMember("archive/data.pkl", data_pkl, external_attr=0x10))
    members.append(B.ZipMember("archive/.data/serialization_id", hidden))
    return B.build_zip(members).data, data_pkl


def test_record_miniz_takes_for_a_directory_is_not_what_torch_unpickles(
        tmp_path: Path, fire: Callable[..., set[str]]) -> None:
    """miniz reads nothing for an entry it takes for a directory (DOS attribute 0x10 or a
    trailing '/') and reports success: torch.load allocates data.pkl's declared size and
    unpickles that memory uninitialized, which holds the bytes of a record torch read and
    freed just before (``.data/serialization_id``, never analyzed as a pickle). The
    scanner analyzed data.pkl's own harmless bytes and reported the file clean under
    every policy while torch.load ran the payload."""
    torch = pytest.importorskip("torch")
    data, data_pkl = _directory_data_pkl("zip_directory_record")
    path = B.write(tmp_path / "model.pt", data)
    with open(path, "rb") as fh:
        read = torch._C.PyTorchFileReader(fh).get_record("data.pkl")
    assert len(read) == len(data_pkl) and read != data_pkl  # not the record's bytes
    # Whether those bytes are the freed record's depends on the allocator reusing it (it
    # does with glibc in a quiet process, not always under load): shown, not required.
    assert fire([(path, "torch")]) <= {"zip_directory_record"}

    report = scan_one(path, ScanOptions(block_severity=_PERMISSIVE))
    assert report.verdict is Verdict.UNSAFE
    assert "SH110" in rules(report)


def _two_directories(members: list[B.ZipMember], *, miniz_attr: dict[str, int]) -> bytes:
    """Stored records, a central directory zipfile reads (right before the end record,
    its offsets shifted by the negative difference) and another one miniz reads (in the
    end record's comment, where the directory offset points): the same names, offsets
    and sizes, but miniz's gives the records in ``miniz_attr`` those external
    attributes."""
    out = bytearray()
    offsets = []
    for m in members:
        offsets.append(len(out))
        name = m.name.encode()
        out += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 0, 0, 0, zlib.crc32(m.data),
                           len(m.data), len(m.data), len(name), 0) + name + m.data

    def directory(shift: int, attrs: dict[str, int]) -> bytes:
        return b"".join(
            struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, 0, 0, 0,
                        zlib.crc32(m.data), len(m.data), len(m.data), len(m.name), 0, 0, 0,
                        0, attrs.get(m.name, 0), offset + shift) + m.name.encode()
            for m, offset in zip(members, offsets, strict=True))

    size = len(directory(0, {}))
    zipfiles = directory(size + 22, {})  # zipfile shifts every offset back by size + 22
    end_record = len(out) + size
    minizs = directory(0, miniz_attr)
    out += zipfiles + struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(members),
                                  len(members), size, end_record + 22, len(minizs)) + minizs
    return bytes(out)


def test_readings_that_differ_only_in_attributes_are_both_analyzed(
        tmp_path: Path, fire: Callable[..., set[str]]) -> None:
    """zipfile and miniz read different central directories that agree on every name,
    offset and compressed size; miniz's marks data.pkl a directory. The scanner took the
    two readings for one (it compared names, offsets and sizes only), analyzed zipfile's,
    and reported one SH115 (clean under permissive) while torch.load unpickled the
    uninitialized memory miniz left in data.pkl's place."""
    pytest.importorskip("torch")
    size = 200_000
    data_pkl = b"\x80\x02X" + struct.pack("<I", size - 8) + b"a" * (size - 8) + b"."
    hidden = (b"N" * (size - 300) + B.os_system_p0("zip_two_directories")).ljust(size, b"N")
    members = [m for m in B.torch_zip_members({})
               if not m.name.endswith(("data.pkl", "serialization_id"))]
    members.insert(0, B.ZipMember("archive/data.pkl", data_pkl))
    members.append(B.ZipMember("archive/.data/serialization_id", hidden))
    data = _two_directories(members, miniz_attr={"archive/data.pkl": 0x10})
    path = B.write(tmp_path / "model.pt", data)
    torch = pytest.importorskip("torch")
    with open(path, "rb") as fh:
        read = torch._C.PyTorchFileReader(fh).get_record("data.pkl")
    assert len(read) == len(data_pkl) and read != data_pkl  # not zipfile's record's bytes
    # As above: that torch then runs the freed record's payload depends on the allocator.
    assert fire([(path, "torch")]) <= {"zip_two_directories"}

    report = scan_one(path, ScanOptions(block_severity=_PERMISSIVE))
    assert report.verdict is Verdict.UNSAFE
    assert "SH110" in rules(report)


def _stored(members: list[B.ZipMember], base: int) -> tuple[bytes, bytes]:
    """Stored local records laid out from offset ``base``, and their central directory."""
    local = bytearray()
    central = bytearray()
    for m in members:
        name = m.name.encode()
        crc = zlib.crc32(m.data)
        central += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, crc,
                               len(m.data), len(m.data), len(name), 0, 0, 0, 0, 0,
                               base + len(local)) + name
        local += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 0, 0, 0, crc, len(m.data),
                             len(m.data), len(name), 0) + name + m.data
    return bytes(local), bytes(central)


def test_zip64_locator_before_offset_76_is_ignored_as_miniz_does(
        tmp_path: Path, fire: Callable[..., set[str]]) -> None:
    """miniz looks for a zip64 locator only when the end record lies 76 bytes or more into
    the file. An end record at offset 50 behind a locator that names a zip64 record of a
    decoy directory (harmless records): torch read the classic record's directory (in
    the end record's comment, the payload), the scanner the decoy's, with two SH115."""
    pytest.importorskip("torch")
    real = [m for m in B.torch_zip_members({}) if not m.name.endswith("data.pkl")]
    real.insert(0, B.ZipMember("archive/data.pkl", b"\x80\x02"
                               + B.os_system_p0("zip64_locator_early")))
    decoy = B.torch_zip_members({})
    eocd_at = 30 + 20  # a bare local header signature for torch's check, then the locator
    real_local, real_dir = _stored(real, eocd_at + 22)
    decoy_local, decoy_dir = _stored(decoy, eocd_at + 22 + len(real_local))
    real_dir_at = eocd_at + 22 + len(real_local) + len(decoy_local)
    decoy_dir_at = real_dir_at + len(real_dir)
    record64_at = decoy_dir_at + len(decoy_dir)
    tail = (real_local + decoy_local + real_dir + decoy_dir
            + struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, len(decoy),
                          len(decoy), len(decoy_dir), decoy_dir_at))
    data = (b"PK\x03\x04" + b"\0" * 26 + struct.pack("<4sIQI", b"PK\x06\x07", 0, record64_at, 1)
            + struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(real), len(real),
                          len(real_dir), real_dir_at, len(tail)) + tail)
    path = B.write(tmp_path / "model.pt", data)
    assert fire([(path, "torch")]) == {"zip64_locator_early"}

    report = scan_one(path, ScanOptions(block_severity=_PERMISSIVE))
    assert report.verdict is Verdict.UNSAFE
    assert "SH100" in rules(report)
