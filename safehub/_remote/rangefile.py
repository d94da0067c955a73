"""A seekable, read-only file over a range client, for the scanner's existing entry point.

Fetched pieces are kept; a read inside a piece costs nothing; a read outside fetches a
window from the read position (64 KiB, doubling on each consecutive sequential miss up
to 4 MiB, so a legacy checkpoint's pickle streams in few requests). :meth:`prefetch`
fetches known-needed ranges together (see :mod:`safehub._remote.plan`). The bytes the
scanner sees are exactly the bytes the server sent for those offsets.
"""

from __future__ import annotations

import bisect
import io
from typing import Protocol

from safehub._remote.http import Stats

__all__ = ["RangeClient", "RangeFile"]

_WINDOW = 1 << 16
_MAX_WINDOW = 1 << 22


class RangeClient(Protocol):
    """What a storage backend offers."""

    stats: Stats
    multi_range: bool

    def fetch(self, ranges: list[tuple[int, int]]) -> list[tuple[int, bytes]]:
        """Pieces covering the ``[start, end)`` ranges."""


class RangeFile(io.RawIOBase):
    """``size`` bytes behind ``client``; ``pieces`` already fetched."""

    def __init__(self, client: RangeClient, size: int,
                 pieces: list[tuple[int, bytes]] | None = None) -> None:
        super().__init__()
        self.client = client
        self.size = size
        self._starts: list[int] = []
        self._data: list[bytes] = []
        self._pos = 0
        self._window = _WINDOW
        self._last_miss_end = -1
        self._longest = 0
        for start, data in pieces or ():
            self._add(start, data)

    # --- cache ------------------------------------------------------------------------------

    def _add(self, start: int, data: bytes) -> None:
        if not data:
            return
        self._longest = max(self._longest, len(data))
        i = bisect.bisect_left(self._starts, start)
        if i < len(self._starts) and self._starts[i] == start and \
                len(self._data[i]) >= len(data):
            return
        if i < len(self._starts) and self._starts[i] == start:
            self._data[i] = data
            return
        self._starts.insert(i, start)
        self._data.insert(i, data)

    def _overlapping(self, start: int, end: int) -> list[tuple[int, bytes]]:
        """Fetched pieces that overlap ``[start, end)``, by start."""
        i = bisect.bisect_left(self._starts, end)
        out: list[tuple[int, bytes]] = []
        for j in range(i - 1, -1, -1):
            piece_start = self._starts[j]
            if piece_start + self._longest <= start:
                break
            if piece_start + len(self._data[j]) > start:
                out.append((piece_start, self._data[j]))
        out.reverse()
        return out

    def _cached(self, start: int, end: int) -> bytes | None:
        """``[start, end)`` from the fetched pieces, if they hold all of it."""
        parts: list[bytes] = []
        pos = start
        for piece_start, data in self._overlapping(start, end):
            if piece_start > pos:
                return None
            piece_end = piece_start + len(data)
            if piece_end > pos:
                parts.append(data[pos - piece_start:min(end, piece_end) - piece_start])
                pos = min(end, piece_end)
            if pos >= end:
                break
        if pos < end:
            return None
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _gaps(self, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of ``[start, end)`` no fetched piece holds."""
        gaps: list[tuple[int, int]] = []
        pos = start
        for s, d in self._overlapping(start, end):
            if s > pos:
                gaps.append((pos, s))
            pos = max(pos, s + len(d))
            if pos >= end:
                break
        if pos < end:
            gaps.append((pos, end))
        return gaps

    def covered(self, start: int, end: int) -> bool:
        """Whether ``[start, end)`` is already fetched."""
        end = min(end, self.size)
        return end <= start or self._cached(start, end) is not None

    def prefetch(self, ranges: list[tuple[int, int]]) -> None:
        """Fetch the parts of ``ranges`` not yet fetched, together."""
        missing = sorted(gap for s, e in ranges if s < self.size
                         for gap in self._gaps(s, min(e, self.size)))
        for start, data in self.client.fetch(missing):
            self._add(start, data)

    # --- file interface -------------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise OSError("negative seek position")
        self._pos = pos
        return pos

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            n = self.size - self._pos
        start = self._pos
        end = min(self.size, start + n)
        if end <= start:
            return b""
        data = self._cached(start, end)
        if data is None:
            self._window = min(self._window * 2, _MAX_WINDOW) \
                if start == self._last_miss_end else _WINDOW
            want_end = min(self.size, max(end, start + self._window))
            for piece_start, piece in self.client.fetch([(start, want_end)]):
                self._add(piece_start, piece)
            self._last_miss_end = want_end
            data = self._cached(start, end)
            if data is None:
                raise OSError(f"the server did not send bytes {start}-{end - 1}")
        self._pos = start + len(data)
        return data

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)
