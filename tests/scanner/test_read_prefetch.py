"""A zip's local headers are asked of the OS all at once before they are read one by one.

A torch checkpoint's headers lie a tensor apart: read one after another from a cold page
cache, each waits for its own disk read (13-25 ms a file in a registry audit). The
scanner now names them all to the kernel first (``posix_fadvise(WILLNEED)``), so the
reads overlap, and still reads and checks every one itself: the verdicts do not change.
Residency is read with ``mincore`` on a real file whose pages were dropped first.
"""

from __future__ import annotations

import ctypes
import io
import os
import pickle
import sys
import zipfile
from pathlib import Path

import pytest

from benchmarks.sparse_checkpoint import sparse_torch_zip
from safehub._scanner.zipdir import find_eocd, read_directory
from safehub.findings import Verdict
from safehub.scan import scan

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not hasattr(os, "posix_fadvise"),
    reason="page-cache residency is read with Linux's mincore")

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _resident(path: Path, offsets: list[int]) -> list[bool]:
    """Whether the page holding each offset is in the page cache (mincore)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
        assert addr not in (None, ctypes.c_void_p(-1).value)
        try:
            vec = (ctypes.c_ubyte * ((size + _PAGE - 1) // _PAGE))()
            assert libc.mincore(addr, size, vec) == 0, os.strerror(ctypes.get_errno())
            return [bool(vec[o // _PAGE] & 1) for o in offsets]
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)


def _drop(path: Path, headers: list[int]) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    if any(_resident(path, headers)):
        pytest.skip("this file system keeps the file's pages in memory (tmpfs?)")


class _Watched(io.BufferedReader):
    """A plain buffered file that notes, when the scanner first seeks to ``at``, which of
    ``watch``'s pages are already in the page cache."""

    def __init__(self, path: Path, at: int, watch: list[int]) -> None:
        super().__init__(io.FileIO(path, "r"))
        self._path, self._at, self._watch = path, at, watch
        self.seen: list[bool] | None = None

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 0 and offset == self._at and self.seen is None:
            self.seen = _resident(self._path, self._watch)
        return super().seek(offset, whence)


def test_local_headers_are_asked_for_before_the_first_is_read(tmp_path: Path) -> None:
    path = sparse_torch_zip(tmp_path / "model.pt", gib=48 / 1024, tensors=48)
    with zipfile.ZipFile(path) as zf:
        tensors = [i.header_offset for i in zf.infolist() if "/data/" in i.filename]
    assert len(tensors) == 48 and tensors[1] - tensors[0] > (512 << 10)  # far apart
    size = path.stat().st_size
    asked = []
    for _ in range(3):  # readahead is best effort: a machine under memory pressure may drop it
        _drop(path, tensors[1:])
        with _Watched(path, tensors[0], tensors[1:]) as fh:
            eocd = find_eocd(fh, size)
            assert eocd is not None
            directory = read_directory(fh, size, eocd)
        # Every header is still read and parsed by the scanner itself.
        assert [e.header_offset for e in directory.entries if "/data/" in e.name] == tensors
        assert all(e.data_offset > e.header_offset for e in directory.entries)
        assert not directory.anomalies
        # When the first tensor's header is read, the kernel already has the others
        # coming (without the hint none is there).
        assert fh.seen is not None
        asked.append(sum(fh.seen))
        if asked[-1] >= len(fh.seen) // 2:
            break
    else:
        pytest.fail(f"headers already asked for in three tries: {asked} of {len(tensors) - 1}")


def test_verdicts_from_a_cold_cache_are_the_same(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return os.system, ("true",)

    clean = sparse_torch_zip(tmp_path / "clean.pt", gib=0.25, tensors=31)
    evil = sparse_torch_zip(tmp_path / "evil.pt", gib=0.25, tensors=8,
                            payload=pickle.dumps({"w": 1, "hook": Payload()}, protocol=2))
    for path in (clean, evil):
        with zipfile.ZipFile(path) as zf:
            _drop(path, [i.header_offset for i in zf.infolist()][2:])
    reports = {Path(f.path).name: f for f in scan([clean, evil]).files}
    assert reports["clean.pt"].verdict is Verdict.CLEAN
    assert reports["clean.pt"].format == "torch-zip"
    report = reports["evil.pt"]
    assert report.verdict is Verdict.UNSAFE
    assert {f.rule_id for f in report.findings} >= {"SH100"}
