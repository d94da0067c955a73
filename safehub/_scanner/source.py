"""Bounded byte sources for the analyzers.

A source is a window onto a file region or a stream. Analyzers read what they
need through it and *skip* what they do not (tensor bytes) by seeking, so the
cost of a scan does not grow with the size of the data it does not inspect.
Non-seekable sources (decompressors) skip by reading and discarding.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Iterable
from typing import BinaryIO, Protocol

__all__ = ["ByteSource", "BytesSource", "FileRegion", "StreamSource", "Truncated", "prefetch"]

_CHUNK = 1 << 16
_FADVISE = getattr(os, "posix_fadvise", None)


def _descriptor(fh: object) -> int | None:
    """The descriptor of a plain file object, or None (a remote view, a decompressor)."""
    if _FADVISE is None or not isinstance(fh, io.BufferedReader | io.FileIO):
        return None
    try:
        return fh.fileno()
    except (OSError, ValueError):
        return None


def _advise(fd: int, offset: int, length: int, advice: int) -> None:
    with contextlib.suppress(OSError):  # a hint: a file system that ignores it reads as before
        _FADVISE(fd, offset, length, advice)  # type: ignore[misc]


def prefetch(fh: BinaryIO, spans: Iterable[tuple[int, int]]) -> None:
    """Ask the OS to start reading every ``(offset, length)`` span of ``fh`` now, all at
    once, so reading them one after another waits for one round of disk reads instead of
    one per span. Only a hint: the spans are still read, and checked, as before. A no-op
    for anything but a plain file (a remote view plans its own requests)."""
    fd = _descriptor(fh)
    if fd is None:
        return
    for offset, length in spans:
        if offset >= 0 and length > 0:
            _advise(fd, offset, length, os.POSIX_FADV_WILLNEED)


class Truncated(Exception):
    """The source ended before the requested bytes (internal; analyzers turn it into findings)."""


class ByteSource(Protocol):
    """What the analyzers need from a source of bytes."""

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; fewer only at the end."""

    def skip(self, n: int) -> int:
        """Advance by up to ``n`` bytes; returns how many were skipped."""

    def tell(self) -> int:
        """Position relative to the start of the source."""

    def remaining(self) -> int | None:
        """Bytes left, when known."""

    def reopen(self) -> ByteSource | None:
        """A fresh source over the same bytes from their start, or None if forward-only."""


class FileRegion:
    """A region ``[start, start + length)`` of a seekable binary file.

    The file object stays open in the caller: what is scanned is what was opened.
    """

    def __init__(self, fh: BinaryIO, start: int, length: int):
        self._fh = fh
        self._start = start
        self._length = length
        self._pos = 0

    def read(self, n: int) -> bytes:
        n = max(0, min(n, self._length - self._pos))
        if n == 0:
            return b""
        self._fh.seek(self._start + self._pos)
        data = self._fh.read(n)
        self._pos += len(data)
        return data

    def skip(self, n: int) -> int:
        n = max(0, min(n, self._length - self._pos))
        self._pos += n
        return n

    def tell(self) -> int:
        return self._pos

    def remaining(self) -> int | None:
        return self._length - self._pos

    def reopen(self) -> ByteSource | None:
        return FileRegion(self._fh, self._start, self._length)

class BytesSource:
    """An in-memory source (decompressed records, nested payloads)."""

    def __init__(self, data: bytes | bytearray | memoryview):
        self._data = memoryview(data)
        self._pos = 0

    def read(self, n: int) -> bytes:
        chunk = bytes(self._data[self._pos : self._pos + max(0, n)])
        self._pos += len(chunk)
        return chunk

    def skip(self, n: int) -> int:
        n = max(0, min(n, len(self._data) - self._pos))
        self._pos += n
        return n

    def tell(self) -> int:
        return self._pos

    def remaining(self) -> int | None:
        return len(self._data) - self._pos

    def reopen(self) -> ByteSource | None:
        return BytesSource(self._data)


class StreamSource:
    """A forward-only stream, e.g. a decompressor; ``limit`` bounds how much is consumed."""

    def __init__(self, stream: io.BufferedIOBase | BinaryIO, limit: int,
                 restart: Callable[[], io.BufferedIOBase | BinaryIO] | None = None):
        self._stream = stream
        self._limit = limit
        self._pos = 0
        self._restart = restart  # opens the stream again from its start (a new decompressor)

    def read(self, n: int) -> bytes:
        n = max(0, min(n, self._limit - self._pos))
        if n == 0:
            return b""
        data = self._stream.read(n)
        self._pos += len(data)
        return data

    def skip(self, n: int) -> int:
        done = 0
        while done < n:
            chunk = self.read(min(_CHUNK, n - done))
            if not chunk:
                break
            done += len(chunk)
        return done

    def tell(self) -> int:
        return self._pos

    def remaining(self) -> int | None:
        return None

    def reopen(self) -> ByteSource | None:
        if self._restart is None:
            return None
        return StreamSource(self._restart(), self._limit, self._restart)

    @property
    def exhausted_limit(self) -> bool:
        return self._pos >= self._limit
