"""torch's legacy tar path, decided and read by the real ``tarfile`` module.

``torch.load`` tries ``tarfile.open(fileobj=f, mode="r:")`` first and reads the ``pickle``
member with ``extractfile``. Each file here is one that a model of tar (a header sniffer,
stored-bytes member reads) gets wrong: tarfile accepts it, torch.load runs its payload (in a
throwaway subprocess, creating a marker file), and the scanner must report it.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from safehub._scanner import fmt_tar
from safehub.findings import Verdict
from tests.scanner import _builders as B
from tests.scanner.conftest import rules, scan_one

torch = pytest.importorskip("torch")

Fire = Callable[..., set[str]]


def _base256_checksum(data: bytes) -> bytes:
    """The first header's checksum field rewritten in base-256 (tarfile's ``nti`` reads it)."""
    block = bytearray(data[:512])
    block[148:156] = b" " * 8
    chk = sum(block)
    block[148:156] = b"\x80" + chk.to_bytes(7, "big")
    return bytes(block) + data[512:]


def _sparse_pickle_member(expanded_payload: bytes, hole: int) -> tuple[bytes, bytes]:
    """(stored, expanded) bytes of a sparse member whose two readings are different pickles.

    Expanded (what extractfile returns): PROTO 2, BINBYTES of ``hole`` bytes (the zeros of
    the hole), then the payload. Stored (the bytes in the archive): the same BINBYTES
    swallows the payload as data and STOP follows: a harmless bytes value.
    """
    head = b"\x80\x02B" + hole.to_bytes(4, "little")
    body = expanded_payload + b"N0" * hole
    body = body[:hole] + b"."
    assert body[:len(expanded_payload)] == expanded_payload
    return head + body, head + b"\0" * hole + body


def _gnu_sparse_tar(members: list[tuple[str, bytes]], sparse_name: str,
                    chunks: list[tuple[int, bytes]], realsize: int) -> bytes:
    """A GNU tar whose member ``sparse_name`` is an old-GNU sparse file ('S') with data
    ``chunks`` at their offsets, holes elsewhere; the others are regular members."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            if name != sparse_name:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            stored = b"".join(chunk for _, chunk in chunks)
            info = tarfile.TarInfo(name)
            info.size = len(stored)
            block = bytearray(info.tobuf(tarfile.GNU_FORMAT))
            block[156:157] = tarfile.GNUTYPE_SPARSE
            pos = 386
            for offset, chunk in chunks:
                block[pos:pos + 12] = b"%011o\0" % offset
                block[pos + 12:pos + 24] = b"%011o\0" % len(chunk)
                pos += 24
            block[483:495] = b"%011o\0" % realsize
            block[148:156] = b" " * 8
            block[148:156] = b"%06o\0 " % sum(block)
            out.write(bytes(block))
            out.write(stored + b"\0" * (-len(stored) % 512))
            tar.offset = out.tell()
    return out.getvalue()


def test_base256_checksum_is_a_tar_torch_loads(tmp_path: Path, fire: Fire) -> None:
    # An old v7 header (no ustar magic to recognise) with its checksum in base-256.
    data = _base256_checksum(B.v7_header(B.torch_tar_bytes(B.os_system_p0("b256"))))
    path = B.write(tmp_path / "b256.pt", data)
    with tarfile.open(path, mode="r:") as tar:  # the real parser accepts the header
        assert tar.getmember("pickle").isfile()
    assert "b256" in fire([(path, "torch")])
    report = scan_one(path)
    assert report.verdict is Verdict.UNSAFE
    assert any(f.rule_id == "SH100" and f.location == "pickle" for f in report.findings)


def test_base256_checksum_benign_tar_is_clean(tmp_path: Path) -> None:
    path = B.write(tmp_path / "ok.pt", _base256_checksum(B.v7_header(B.torch_tar_bytes(
        pickle.dumps({"a": 1}, 2)))))
    assert torch.load(path, weights_only=False) == {"a": 1}
    report = scan_one(path)
    assert report.verdict is Verdict.CLEAN and report.format == "torch-tar"


def test_gnu_sparse_member_is_read_with_holes_expanded(tmp_path: Path, fire: Fire) -> None:
    hole = 256
    payload = B.call_prefix("sparse")
    stored, expanded = _sparse_pickle_member(payload, hole)
    head, tail = stored[:7], stored[7:]
    members = [("storages", pickle.dumps(0, 2) + pickle.dumps([], 2)),
               ("tensors", pickle.dumps(0, 2)), ("pickle", b"")]
    data = _gnu_sparse_tar(members, "pickle", [(0, head), (7 + hole, tail)], len(expanded))
    path = B.write(tmp_path / "sparse.pt", data)
    with tarfile.open(path, mode="r:") as tar:
        member = tar.getmember("pickle")
        assert member.issparse()
        assert tar.extractfile(member).read() == expanded  # type: ignore[union-attr]
    # The stored bytes alone are a harmless pickle; the expanded ones run the payload.
    assert pickle.loads(stored) == tail[:hole]
    assert "sparse" in fire([(path, "torch")])
    report = scan_one(path)
    assert report.verdict is Verdict.UNSAFE
    assert any(f.rule_id == "SH100" and f.location == "pickle" for f in report.findings)


def test_pax_long_member_names_resolve_as_tarfile_does(tmp_path: Path, fire: Fire) -> None:
    """A PAX header renames the next member to ``pickle``; the ustar name says otherwise."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in [("storages", pickle.dumps(0, 2) + pickle.dumps([], 2)),
                           ("tensors", pickle.dumps(0, 2)),
                           ("pickle", pickle.dumps({"ok": 1}, 2)),
                           ("pickle", B.os_system_p0("pax"))]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.pax_headers = {"path": name, "comment": "x" * 200}
            tar.addfile(info, io.BytesIO(data))
    path = B.write(tmp_path / "pax.pt", out.getvalue())
    assert "pax" in fire([(path, "torch")])  # the last member of a name is what loads
    report = scan_one(path)
    assert report.verdict is Verdict.UNSAFE and "SH100" in rules(report)


def test_oversized_pax_header_is_refused_without_reading_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PAX record block bigger than the cap ends the analysis with SH191 (not read)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("pickle")
        data = pickle.dumps({}, 2)
        info.size = len(data)
        info.pax_headers = {"comment": "y" * 4096}
        tar.addfile(info, io.BytesIO(data))
    monkeypatch.setattr(fmt_tar, "MAX_HEADER_READ", 1024)
    report = scan_one(B.write(tmp_path / "big.pt", out.getvalue()))
    assert report.verdict is Verdict.UNSAFE and "SH191" in rules(report)


def test_member_count_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fmt_tar, "MAX_MEMBERS", 5)
    members = [(f"f{i}", b"") for i in range(10)] + [("pickle", pickle.dumps({}, 2))]
    report = scan_one(B.write(tmp_path / "many.pt", B.tar_bytes(members)))
    assert report.verdict is Verdict.UNSAFE and "SH191" in rules(report)


def test_a_long_run_of_long_name_headers_is_a_finding_not_a_crash(tmp_path: Path) -> None:
    """tarfile reads the header after a GNU long name recursively: thousands in a row are a
    RecursionError in tarfile (torch.load fails with it too). It was the scanner's own
    internal error (exit 2), which ended the scan of a whole folder: the real CLI, with
    Python's default recursion limit, scans a folder holding such a file and a pickle."""
    import subprocess
    import sys

    blocks = []
    for i in range(5000):
        info = tarfile.TarInfo("././@LongLink")
        info.type = tarfile.GNUTYPE_LONGNAME
        name = f"member{i}".encode().ljust(100, b"\0")
        info.size = len(name)
        blocks += [info.tobuf(format=tarfile.GNU_FORMAT), name, b"\0" * (-len(name) % 512)]
    blocks += [tarfile.TarInfo("last").tobuf(format=tarfile.GNU_FORMAT), b"\0" * 1024]
    folder = tmp_path / "models"
    folder.mkdir()
    B.write(folder / "chain.pt", b"".join(blocks))
    B.write(folder / "evil.pkl", b"cposix\nsystem\n(S'echo pwned'\ntR.")
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "safehub", "scan", str(folder)],
                          capture_output=True, text=True, timeout=300, cwd=root,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert "internal error" not in done.stderr, done.stderr
    assert done.returncode == 1
    assert "SH100" in done.stdout and "chain.pt" in done.stdout


def test_tar_that_is_also_numpy_is_a_polyglot(tmp_path: Path) -> None:
    """tarfile checks only the checksum: a header whose name starts with numpy's magic is
    still a tar to torch.load, and an array to numpy.load."""
    data = bytearray(B.torch_tar_bytes(pickle.dumps({}, 2)))
    data[0:10] = b"\x93NUMPY\x01\x00v\x00"
    data[148:156] = b" " * 8
    data[148:156] = b"%06o\0 " % sum(data[:512])
    path = B.write(tmp_path / "both.npy", bytes(data))
    with tarfile.open(path, mode="r:"):
        pass
    report = scan_one(path)
    assert report.verdict is Verdict.UNSAFE
    assert any(f.subject == "tar-polyglot" for f in report.findings)


def test_non_tar_is_decided_by_tarfile(tmp_path: Path) -> None:
    """A file tarfile refuses (bad checksum) is not scanned as a tar: it is whatever else it is."""
    data = bytearray(B.torch_tar_bytes(pickle.dumps({}, 2)))
    data[148:156] = b"0000000\0"
    path = B.write(tmp_path / "bad.pt", bytes(data))
    with pytest.raises(tarfile.ReadError), tarfile.open(path, mode="r:"):
        pass
    assert scan_one(path).format != "torch-tar"


def test_header_bytes_are_budgeted_across_members(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Many members with modest PAX headers add up: the budget is per archive."""
    out = io.BytesIO()
    members = [(f"f{i}", b"") for i in range(8)] + [
        ("storages", pickle.dumps(0, 2) + pickle.dumps([], 2)),
        ("tensors", pickle.dumps(0, 2)), ("pickle", pickle.dumps({}, 2))]
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.pax_headers = {"comment": "z" * 600}
            tar.addfile(info, io.BytesIO(data))
    path = B.write(tmp_path / "many-pax.pt", out.getvalue())
    assert torch.load(path, weights_only=False) == {}  # tarfile and torch read it fine
    assert scan_one(path).verdict is Verdict.CLEAN
    monkeypatch.setattr(fmt_tar, "MAX_HEADER_READ", 4096)
    report = scan_one(path)
    assert report.verdict is Verdict.UNSAFE and "SH191" in rules(report)


def _checksum_spellings(block: bytes) -> list[bytes]:
    """The first header with its checksum written every way we know tarfile may accept."""
    base = bytearray(block[:512])
    base[148:156] = b" " * 8
    unsigned = sum(base)
    signed = sum(b - 256 if b > 127 else b for b in base)
    fields = [b"%06o\0 " % unsigned, b"%07o\0" % unsigned, b"%o" % unsigned + b" " * 2,
              b" %06o\0" % unsigned, b"\x80" + unsigned.to_bytes(7, "big"),
              b"%06o\0 " % (signed & 0o7777777), b"%06o\0 " % (unsigned + 1),
              b"\xff" + (2 ** 56 - unsigned).to_bytes(7, "big"), b"\0" * 8, b"        "]
    out = []
    for field in fields:
        b = bytearray(base)
        b[148:156] = field[:8].ljust(8, b"\0")
        out.append(bytes(b) + block[512:])
    return out


def test_tar_decision_is_tarfiles_own() -> None:
    """Differential: for header spellings and single-byte mutations of the first header,
    the scanner takes the tar path exactly when tarfile.open(mode="r:") accepts."""
    import random

    rng = random.Random(1234)  # derandomized: the same inputs every run
    data = B.torch_tar_bytes(pickle.dumps({"a": 1}, 2))
    inputs = _checksum_spellings(data) + _checksum_spellings(B.v7_header(data))
    for _ in range(300):
        b = bytearray(data)
        b[rng.randrange(512)] = rng.randrange(256)
        inputs.append(bytes(b))
    agree = {True: 0, False: 0}
    for blob in inputs:
        try:
            with tarfile.open(fileobj=io.BytesIO(blob), mode="r:"):
                real = True
        except tarfile.TarError:
            real = False
        probe = fmt_tar.probe_tar(io.BytesIO(blob))
        assert probe.accepted is real, blob[:512]
        agree[real] += 1
    assert agree[True] and agree[False]  # both answers were exercised


def test_decompile_shows_the_tar_member_as_tarfile_reads_it(tmp_path: Path) -> None:
    from safehub.scan import ScanOptions

    data = _base256_checksum(B.v7_header(B.torch_tar_bytes(B.os_system_p0("shown"))))
    path = B.write(tmp_path / "b256.pt", data)
    report = scan_one(path, ScanOptions(decompile=True))
    assert report.verdict is Verdict.UNSAFE
    [(location, source)] = report.decompiled
    assert location == "pickle" and "system('touch shown')" in source
