"""Bounded resources: hostile sizes end with a finding, never a hang or a crash.

No timing assertions here (they fail on a loaded machine): how long these take is measured
by the scanner benchmarks (benchmarks/), not asserted.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from safehub.findings import Verdict
from safehub.scan import Limits, ScanOptions, scan_file
from tests.scanner import _builders as B
from tests.scanner.conftest import rules, scan_one


def _scan(data: bytes, options: ScanOptions | None = None) -> object:
    return scan_file(io.BytesIO(data), "x", options=options)


def test_million_opcodes_finish_clean() -> None:
    report = _scan(b"N0" * 1_000_000 + b"N.")
    assert report.verdict is Verdict.CLEAN  # type: ignore[attr-defined]


def test_opcode_limit_is_a_finding() -> None:
    report = _scan(b"N0" * 1_000_000 + b"N.", ScanOptions(limits=Limits(max_ops=10_000)))
    assert "SH191" in rules(report)  # type: ignore[arg-type]


def test_value_limit_is_a_finding() -> None:
    data = b"\x80\x04]" + b"(" + b"N" * 100_000 + b"e."
    report = _scan(data, ScanOptions(limits=Limits(max_values=1000)))
    assert "SH191" in rules(report)  # type: ignore[arg-type]


def test_deep_nesting_is_fine() -> None:
    data = b"]" * 200_000 + b"a" * 199_999 + b"."
    report = _scan(data)
    assert report.verdict is Verdict.CLEAN  # type: ignore[attr-defined]


def test_deep_marks_are_fine() -> None:
    report = _scan(b"(" * 200_000 + b"N" + b"t" * 200_000 + b".")
    assert report.verdict is Verdict.CLEAN  # type: ignore[attr-defined]


@pytest.mark.parametrize("op", [b"\x8e", b"\x8d", b"\x96"])
def test_huge_declared_length_is_truncation(op: bytes) -> None:
    report = _scan(b"\x80\x05" + op + (1 << 62).to_bytes(8, "little") + b"abc.")
    assert "SH111" in rules(report)  # type: ignore[arg-type]


def test_huge_line_argument_is_bounded() -> None:
    report = _scan(b"c" + b"a" * (3 << 20))
    assert report.verdict is not Verdict.CLEAN  # type: ignore[attr-defined]


def test_zip_with_many_entries(tmp_path: Path) -> None:
    members = [B.ZipMember(f"archive/data/{i}", b"") for i in range(30_000)]
    members.append(B.ZipMember("archive/data.pkl", b"\x80\x02}q\x00."))
    path = B.write(tmp_path / "many.pt", B.build_zip(members).data)
    report = scan_one(path)
    assert report.verdict is Verdict.CLEAN


def test_zip_declaring_too_many_entries(tmp_path: Path) -> None:
    data = bytearray(B.build_zip([B.ZipMember("a.pkl", b"N.")]).data)
    eocd = data.rfind(b"PK\x05\x06")
    data[eocd + 8:eocd + 12] = b"\xff\xfe\xff\xfe"
    assert scan_one(B.write(tmp_path / "z.pt", bytes(data))).verdict is not Verdict.CLEAN


def test_npz_decompression_bomb_is_not_inflated(tmp_path: Path) -> None:
    n = 1 << 25  # 256 MiB of float64 zeros, declared and really compressed
    header = B.npy_bytes(f"{{'descr': '<f8', 'fortran_order': False, 'shape': ({n},), }}", b"")
    member = B.ZipMember("a.npy", header, method=8, compressed=B.deflate_bomb(header, n * 8),
                         size=len(header) + n * 8)
    path = B.write(tmp_path / "bomb.npz", B.build_zip([member]).data)
    report = scan_one(path)
    assert report.verdict is Verdict.CLEAN  # numbers only: legitimate, if large


def test_object_npz_member_bomb_stops_at_the_record_limit(tmp_path: Path) -> None:
    header = B.npy_bytes("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }", b"")
    body = b"\x80\x04\x8e" + (1 << 40).to_bytes(8, "little")
    member = B.ZipMember("a.npy", header + body, method=8,
                         compressed=B.deflate_bomb(header + body, 64 << 20), size=0xFFFFFFF0)
    path = B.write(tmp_path / "obj.npz", B.build_zip([member]).data)
    report = scan_one(path, ScanOptions(max_record_size=16 << 20))
    assert report.verdict is Verdict.UNSAFE
    assert rules(report) & {"SH111", "SH191"}


def test_file_size_limit(tmp_path: Path) -> None:
    path = B.write(tmp_path / "big.pkl", b"N." + b"\0" * 4096)
    report = scan_one(path, ScanOptions(max_file_size=1024))
    assert "SH191" in rules(report)


def _deflated_zip(chunk: bytes, count: int, records: int = 1) -> bytes:
    """A torch zip whose data.pkl records inflate to ``chunk * count`` (streamed, not built)."""
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for r in range(records):
            name = "archive/data.pkl" if r == 0 else f"archive/extra{r}.pkl"
            with zf.open(name, "w", force_zip64=True) as out:
                out.write(b"\x80\x02")
                block = chunk * 65536
                for _ in range(count // 65536):
                    out.write(block)
                out.write(chunk * (count % 65536) + b"N.")
        zf.writestr("archive/version", b"3\n")
    return buf.getvalue()


def test_deflate_bomb_of_opcodes_ends_in_sh191() -> None:
    """data.pkl inflating to 200 MB of opcodes: analysis stops at the opcode budget."""
    data = _deflated_zip(b"N0", 100_000_000)
    assert len(data) < 1 << 20
    report = _scan(data)
    found = [f for f in report.findings if f.rule_id == "SH191"]  # type: ignore[attr-defined]
    assert found and f"more than {Limits().max_ops} opcodes" in found[0].message


def test_opcode_budget_is_per_file_not_per_record() -> None:
    """Many records under the limit each still spend one budget for the file."""
    limits = Limits(max_ops=50_000)
    data = _deflated_zip(b"N0", 20_000, records=6)  # 40k opcodes a record, 240k in all
    one = _scan(_deflated_zip(b"N0", 20_000), ScanOptions(limits=limits))
    assert "SH191" not in rules(one)  # type: ignore[arg-type]
    many = _scan(data, ScanOptions(limits=limits))
    assert "SH191" in rules(many)  # type: ignore[arg-type]


def test_many_tiny_records_spend_the_budget_once() -> None:
    """Starting a stream costs budget too: a zip of many tiny pickle records stops with
    one SH191 instead of analyzing (and reporting) each."""
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(2000):
            zf.writestr(f"a/{i}.pkl", b"N.")
    report = _scan(buf.getvalue(), ScanOptions(limits=Limits(max_ops=10_000)))
    limit = [f for f in report.findings if f.rule_id == "SH191"]  # type: ignore[attr-defined]
    assert 1 <= len(limit) <= 2
    assert len(report.records) < 2000  # type: ignore[attr-defined]


def test_text_opcodes_cost_more_of_the_budget() -> None:
    """A text opcode (its line found and parsed twice) is charged more than a binary one:
    a flood of them ends in SH191 long before the same count of binary opcodes would."""
    from safehub._scanner.pickle_vm import TEXT_OP_COST

    limits = Limits(max_ops=10_000)
    count = 10_000 // (2 + TEXT_OP_COST) + 500  # over the budget only when text costs more
    binary = _scan(b"N0" * (count // 2) + b"N.", ScanOptions(limits=limits))
    assert "SH191" not in rules(binary)  # type: ignore[arg-type]
    for op in (b"S''\n", b"F0\n", b"I0\n", b"L0\n", b"V\n", b"S'\\q'\n"):
        report = _scan(op * count + b".", ScanOptions(limits=limits))
        assert "SH191" in rules(report, blocking=False), op  # type: ignore[arg-type]


def _shared_deflate_zip(deflated: bytes, size: int, names: list[str]) -> bytes:
    """A zip whose central records all point at one local header and its deflate data:
    the archive is a few bytes per record, the inflation work it asks for is per record."""
    import struct

    crc = 0
    first = names[0].encode()
    local = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 8, 0, 0, crc, len(deflated),
                        size, len(first), 0) + first
    central = b"".join(
        struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, 8, 0, 0, crc,
                    len(deflated), size, len(name.encode()), 0, 0, 0, 0, 0, 0) + name.encode()
        for name in names)
    body = local + deflated
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(names), len(names), len(central),
                      len(body), 0)
    return body + central + end


@pytest.mark.parametrize("kind", ["empty-blocks", "zeros"])
def test_records_sharing_one_deflate_stream_spend_one_budget(kind: str) -> None:
    """scanattack6: every central record may point at the same deflate data. Empty stored
    blocks cost input and give no output (peeking a record's first bytes inflated all of
    them), and a pickle record's long BINBYTES8 of zeros is skipped by inflating it: a
    13 MB archive of 60,000 records took hours. Decompression is charged to the file's
    budget; when it is spent the rest of the archive is not analyzed (SH191)."""
    import zlib

    if kind == "empty-blocks":
        stream = zlib.compressobj(9, zlib.DEFLATED, -15)
        data = b"\x00\x00\x00\xff\xff" * 50_000 + stream.compress(b"data") + stream.flush()
        size, names = 4, [f"a/r{i}" for i in range(64)]
    else:
        length = 4 << 20
        data = B.deflate_bomb(b"\x80\x04\x8e" + length.to_bytes(8, "little"), length)
        size, names = 11 + length, [f"a/d{i}.pkl" for i in range(64)]
    archive = _shared_deflate_zip(data, size, names)
    assert len(archive) < 512 << 10
    budget = 8 << 20  # 64 records would ask for 16 MB (blocks) or 256 MB (zeros)
    report = _scan(archive, ScanOptions(limits=Limits(max_inflate=budget)))
    spent = [f for f in report.findings if f.rule_id == "SH191"]  # type: ignore[attr-defined]
    assert spent and "decompression budget" in spent[0].message
    assert report.verdict is Verdict.UNSAFE  # type: ignore[attr-defined]


def test_one_large_deflated_record_fits_the_budget() -> None:
    """A single record inflating to more than the opcodes it holds (a long BINBYTES) is
    read to its end within the default budget."""
    length = 64 << 20
    data = B.deflate_bomb(b"\x80\x04\x8e" + length.to_bytes(8, "little"), length)
    archive = _shared_deflate_zip(data, 11 + length, ["a/data.pkl"])
    report = _scan(archive)
    assert "SH191" not in rules(report, blocking=False)  # type: ignore[arg-type]


def test_npy_headers_parsed_under_many_names_spend_the_budget() -> None:
    """scanattack6: an .npz whose central records all name one stored member with a
    53 KB many-field header (shape (0,): no data) had that header parsed anew for each
    name, outside any budget (70 ms each: 60,000 names in a 3.4 MB archive, over an
    hour). Parsing a header now spends the file's opcode budget (SH191 when spent)."""
    import numpy as np

    array = np.zeros(0, dtype=[(f"f{i}", "<f8") for i in range(3000)])
    buf = io.BytesIO()
    np.save(buf, array)
    member = buf.getvalue()
    names = [f"a{i}.npy" for i in range(64)]
    archive = _shared_stored_zip(member, names)
    loaded = np.load(io.BytesIO(archive), allow_pickle=True)  # a real npz to numpy
    assert loaded["a0"].dtype == array.dtype
    report = _scan(archive, ScanOptions(limits=Limits(max_ops=500_000)))
    spent = [f for f in report.findings if f.rule_id == "SH191"]  # type: ignore[attr-defined]
    assert spent and "opcodes spent" in spent[0].message
    one = _scan(_shared_stored_zip(member, names[:1]))
    assert one.verdict is Verdict.CLEAN  # type: ignore[attr-defined]


def _shared_stored_zip(data: bytes, names: list[str]) -> bytes:
    """A zip whose central records all name one stored local member."""
    import struct
    import zlib

    crc = zlib.crc32(data)
    first = names[0].encode()
    local = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 0, 0, 0, crc, len(data),
                        len(data), len(first), 0) + first
    central = b"".join(
        struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, crc,
                    len(data), len(data), len(name.encode()), 0, 0, 0, 0, 0, 0)
        + name.encode() for name in names)
    body = local + data
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(names), len(names), len(central),
                      len(body), 0)
    return body + central + end
