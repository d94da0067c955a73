"""Bounded byte sources for the analyzers.

A source is a window onto a file region or a stream. Analyzers read what they
need through it and *skip* what they do not (tensor bytes) by seeking, so the
cost of a scan does not grow with the size of the data it does not inspect.
Non-seekable sources (decompressors) skip by reading and discarding.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import BinaryIO, Protocol

__all__ = ["ByteSource", "BytesSource", "FileRegion", "StreamSource", "Truncated"]

_CHUNK = 1 << 16


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
