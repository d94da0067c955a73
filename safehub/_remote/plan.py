"""What the scanner will read from a remote file, fetched up front in few requests.

The scanner reads a file's first bytes, its last 64 KiB (the zip end record), and for a
zip the central directory, every local header (plus 8 bytes of data it peeks at) and
every pickle record. The first two come in the first request; for a zip, the central
directory is parsed here (zip64 included) and the local headers and pickle records are
fetched together, coalesced and batched into multi-range requests.

This is only a hint: the scan reads through :class:`~safehub._remote.rangefile.RangeFile`,
which fetches anything not prefetched, so a wrong plan costs requests, never a verdict.
"""

from __future__ import annotations

import struct

from safehub._remote.rangefile import RangeFile
from safehub._scanner.zipdir import zip64_sizes

__all__ = ["BRIDGE", "HEAD", "REQUESTS", "TAIL", "coalesce", "fit", "zip_plan"]

HEAD = 1 << 16
TAIL = (1 << 16) + 22 + 4096  # the scanner's end-record search window, and a little more
_HEADER_SLACK = 30 + 160  # fixed local header, an extra field (torch pads to 64), 8 peeked
_MAX_PICKLE = 64 << 20
REQUESTS = 8  # the requests a file should take where the server answers one range at a time
BRIDGE = 1 << 20  # bytes between ranges a file may fetch to stay within REQUESTS


def coalesce(ranges: list[tuple[int, int]], gap: int) -> list[tuple[int, int]]:
    """Sorted ranges, merged where less than ``gap`` bytes separate them."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1] + gap:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def fit(ranges: list[tuple[int, int]], requests: int, allowance: int
        ) -> list[tuple[int, int]]:
    """Sorted disjoint ``ranges`` merged across their smallest gaps, while more than
    ``requests`` remain and the bytes between them add up to at most ``allowance``.

    What is left over is fetched as it is: a file whose records lie further apart costs
    more requests, never a skipped read.
    """
    out = list(ranges)
    spent = 0
    while len(out) > max(1, requests):
        gap, i = min((out[j + 1][0] - out[j][1], j) for j in range(len(out) - 1))
        if spent + gap > allowance:
            break
        spent += gap
        out[i:i + 2] = [(out[i][0], out[i + 1][1])]
    return out


def _read(fh: RangeFile, start: int, length: int) -> bytes | None:
    if start < 0 or start + length > fh.size or not fh.covered(start, start + length):
        return None
    fh.seek(start)
    return fh.read(length)


def _directory(fh: RangeFile) -> tuple[int, int, int] | None:
    """(offset of the central directory, its size, bytes before the archive) from the
    end record in the already fetched tail, or None."""
    tail_start = max(0, fh.size - TAIL)
    tail = _read(fh, tail_start, fh.size - tail_start)
    if tail is None:
        return None
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + 22 > len(tail):
        return None
    cd_size, cd_offset = struct.unpack_from("<II", tail, at + 12)
    eocd = tail_start + at
    if cd_offset == 0xFFFFFFFF or cd_size == 0xFFFFFFFF:
        locator = tail[at - 20:at] if at >= 20 else b""
        if len(locator) != 20 or locator[:4] != b"PK\x06\x07":
            return None
        rec64_at = struct.unpack_from("<Q", locator, 8)[0]
        rec64 = _read(fh, rec64_at, 56)
        if rec64 is None or rec64[:4] != b"PK\x06\x06":
            return None
        cd_size, cd_offset = struct.unpack_from("<QQ", rec64, 40)
        end_of_cd = rec64_at
    else:
        end_of_cd = eocd
    prefix = max(0, end_of_cd - cd_size - cd_offset)
    return cd_offset + prefix, cd_size, prefix


def zip_plan(fh: RangeFile, max_record: int = _MAX_PICKLE) -> list[tuple[int, int]]:
    """Ranges a zip scan will read beyond the head and tail: the central directory (first,
    if it is not fetched yet), then local headers and pickle records. Empty when the file
    is not a zip or its directory cannot be parsed here."""
    head = _read(fh, 0, 4)
    if head is None or head != b"PK\x03\x04":
        return []
    found = _directory(fh)
    if found is None:
        return []
    cd_start, cd_size, prefix = found
    if cd_start + cd_size > fh.size:
        return []
    if not fh.covered(cd_start, cd_start + cd_size):
        fh.prefetch([(cd_start, cd_start + cd_size)])
    central = _read(fh, cd_start, cd_size)
    if central is None:
        return []
    wanted: list[tuple[int, int]] = []
    pos = 0
    while pos + 46 <= len(central) and central[pos:pos + 4] == b"PK\x01\x02":
        csize, usize, name_len, extra_len, comment_len = struct.unpack_from(
            "<IIHHH", central, pos + 20)
        offset = struct.unpack_from("<I", central, pos + 42)[0]
        name = central[pos + 46:pos + 46 + name_len]
        extra = central[pos + 46 + name_len:pos + 46 + name_len + extra_len]
        _, csize, offset = zip64_sizes(extra, usize, csize, offset)
        header = offset + prefix
        wanted.append((header, header + _HEADER_SLACK + 2 * name_len))
        if name.lower().endswith(b".pkl") or name.lower().endswith(b".npy"):
            end = header + _HEADER_SLACK + 2 * name_len + min(csize, max_record)
            wanted.append((header, end))
        pos += 46 + name_len + extra_len + comment_len
    ranges = [(s, min(e, fh.size)) for s, e in wanted if s < fh.size]
    if fh.client.multi_range:
        return coalesce(ranges, 1 << 12)
    # One request per range where the server takes one range at a time (S3): merge across
    # gaps up to 128 KiB, about what one request's latency would transfer, then across the
    # smallest wider gaps (up to BRIDGE bytes in all) to stay within REQUESTS for the file;
    # wider gaps cost more in egress than in requests (1 MB ~ 200 GETs at AWS prices).
    left = REQUESTS - fh.client.stats.requests
    return fit(coalesce(ranges, 1 << 17), left, BRIDGE)
