"""One immutable copy of a file's bytes per load: hash, scan and load read the same bytes.

A path or a file can change between the read that hashes or scans it and the read that
loads it (an in-place rewrite, a folder swap, a file object whose reads are not
repeatable). A :class:`Snapshot` copies the bytes once into a sealed memfd (Linux:
``memfd_create``, ``sendfile``, then ``F_SEAL_WRITE|SHRINK|GROW|SEAL``: nobody, not even
this process, can change it any more), or into one ``bytes`` object where memfds are
not available. Everything downstream reads the snapshot, never the source again.

The cost is one copy of the file into memory (see ``benchmarks/snapshot_bench.py``).
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from typing import Any, BinaryIO

from safehub.errors import SafehubError

__all__ = ["Snapshot"]

_CHUNK = 1 << 20
_SEALS = ("F_SEAL_WRITE", "F_SEAL_SHRINK", "F_SEAL_GROW", "F_SEAL_SEAL")


class Snapshot:
    """A private, immutable copy of a file's bytes. Close it (or use ``with``) when done."""

    def __init__(self, *, fd: int | None = None, data: bytes | None = None, name: str = ""):
        self._fd = fd
        self._data = data
        self.name = name
        self.size = os.fstat(fd).st_size if fd is not None else len(data or b"")
        self._sha256: str | None = None

    # --- construction -----------------------------------------------------------------------

    @classmethod
    def of_path(cls, path: str | os.PathLike[str]) -> Snapshot:
        """Snapshot the regular file at ``path`` (opened once)."""
        name = os.fspath(path)
        try:
            # O_NONBLOCK: a FIFO in the file's place must not block the open.
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            raise SafehubError(f"cannot open the file: {exc.strerror}", subject=name,
                               fix="check the path and its permissions") from exc
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise SafehubError("not a regular file", subject=name,
                                   fix="load a regular file")
            return cls.of_fd(fd, name)
        finally:
            os.close(fd)

    @classmethod
    def of_fd(cls, fd: int, name: str) -> Snapshot:
        """Snapshot an open descriptor's whole content (from offset 0; the offset is not
        moved). A descriptor that is not a regular file is read from where it is."""
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return cls._of_chunks(iter(lambda: os.read(fd, _CHUNK), b""), name)
        memfd = _new_memfd(name)
        if memfd is None:
            return cls(data=_pread_all(fd), name=name)
        try:
            offset = 0
            while True:
                # The kernel copies; the bytes never pass through Python.
                sent = os.sendfile(memfd, fd, offset, 1 << 30)
                if sent == 0:
                    break
                offset += sent
            _seal(memfd)
        except BaseException:
            os.close(memfd)
            raise
        return cls(fd=memfd, name=name)

    @classmethod
    def of_fileobj(cls, f: Any, name: str) -> Snapshot:
        """Snapshot a binary file object: its whole content when it is seekable (as torch
        reads it), else what is left to read. Its position ends at the end."""
        fileno = _fileno(f)
        if fileno is not None and _seekable(f):
            if f.writable():
                f.flush()  # bytes still in the writer's buffer belong to the file too
            snap = cls.of_fd(fileno, name)
            f.seek(0, os.SEEK_END)
            return snap
        if _seekable(f):
            f.seek(0)
        return cls._of_chunks(iter(lambda: f.read(_CHUNK), b""), name)

    @classmethod
    def _of_chunks(cls, chunks: Any, name: str) -> Snapshot:
        memfd = _new_memfd(name)
        if memfd is None:
            return cls(data=b"".join(_as_bytes(c, name) for c in chunks), name=name)
        try:
            with os.fdopen(os.dup(memfd), "wb", closefd=True) as out:
                for chunk in chunks:
                    out.write(_as_bytes(chunk, name))
            _seal(memfd)
        except BaseException:
            os.close(memfd)
            raise
        return cls(fd=memfd, name=name)

    # --- reading ----------------------------------------------------------------------------

    @property
    def fd(self) -> int | None:
        """The sealed memfd, or None when the bytes are held in memory."""
        return self._fd

    @property
    def path(self) -> str | None:
        """A path that opens this snapshot (``/proc/self/fd/N``), for loaders that need a
        path (``torch.load(mmap=True)``); None when there is none."""
        if self._fd is None:
            return None
        path = f"/proc/self/fd/{self._fd}"
        return path if os.path.exists(path) else None

    def open(self) -> BinaryIO:
        """A new reader positioned at 0 (independent of other readers)."""
        if self._fd is None:
            return io.BytesIO(self._data or b"")
        return os.fdopen(self.reader_fd(), "rb")

    def reader_fd(self) -> int:
        """A new read-only descriptor on the snapshot (the caller closes it)."""
        if self._fd is None:
            raise SafehubError("this snapshot has no descriptor", subject=self.name)
        path = self.path
        if path is not None:
            # A new open file description, read-only: its offset is its own.
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        return os.dup(self._fd)

    @property
    def sha256(self) -> str:
        """The SHA-256 of the snapshot (computed once)."""
        if self._sha256 is None:
            h = hashlib.sha256()
            if self._fd is None:
                h.update(self._data or b"")
            else:
                offset = 0
                while chunk := os.pread(self._fd, 8 * _CHUNK, offset):
                    h.update(chunk)
                    offset += len(chunk)
            self._sha256 = h.hexdigest()
        return self._sha256

    def close(self) -> None:
        """Release the copy."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._data = None

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            self.close()


def _new_memfd(name: str) -> int | None:
    create = getattr(os, "memfd_create", None)
    sealing = getattr(os, "MFD_ALLOW_SEALING", None)
    if create is None or sealing is None:
        return None
    try:
        return int(create("safehub-snapshot", os.MFD_CLOEXEC | sealing))
    except OSError:
        return None


def _seal(memfd: int) -> None:
    import fcntl

    seals = 0
    for seal in _SEALS:
        seals |= getattr(fcntl, seal)
    fcntl.fcntl(memfd, fcntl.F_ADD_SEALS, seals)


def _pread_all(fd: int) -> bytes:
    parts = []
    offset = 0
    while chunk := os.pread(fd, 8 * _CHUNK, offset):
        parts.append(chunk)
        offset += len(chunk)
    return b"".join(parts)


def _as_bytes(chunk: Any, name: str) -> bytes:
    if isinstance(chunk, (bytes, bytearray, memoryview)):
        return bytes(chunk)
    raise SafehubError(f"the file object returned {type(chunk).__name__}, not bytes",
                       subject=name, fix="open the file in binary mode ('rb')")


def _fileno(f: Any) -> int | None:
    # Only plain files: a wrapper (gzip, a decoder) has the fileno of bytes it transforms.
    if type(f) not in (io.BufferedReader, io.BufferedRandom, io.FileIO):
        return None
    try:
        fileno = f.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None
    if not isinstance(fileno, int):
        return None
    return fileno


def _seekable(f: Any) -> bool:
    try:
        return bool(f.seekable())
    except (AttributeError, OSError, ValueError):
        return hasattr(f, "seek")
