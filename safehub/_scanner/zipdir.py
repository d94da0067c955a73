"""Reading a zip archive's directory the way torch (miniz) and numpy (zipfile) do.

Both loaders trust the central directory: a record's data is found from its
central entry's local-header offset, and the local header contributes only the
lengths that say where the data starts. Names, flags and CRCs in local headers
are ignored by torch, so a scanner that trusts them can be shown different
content than the loader. Here every discrepancy is recorded as an anomaly, and
records are always located through the central directory.
"""

from __future__ import annotations

import itertools
import struct
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO

from safehub._scanner.pickle_vm import OpBudget
from safehub._scanner.source import ByteSource, FileRegion, StreamSource, prefetch

__all__ = ["NoDirectory", "ZipDirectory", "ZipEntry", "ZipError", "find_eocd", "read_directory",
           "zip64_sizes"]

_EOCD = b"PK\x05\x06"
_EOCD64_LOCATOR = b"PK\x06\x07"
_EOCD64 = b"PK\x06\x06"
_CENTRAL = b"PK\x01\x02"
_LOCAL = b"PK\x03\x04"
# How far from the end miniz (torch) finds an end record: it searches 4 KiB blocks backward,
# each 4093 bytes before the last, and gives up only after a block that starts 22 + 0xFFFF
# bytes or more from the end, so the 17th block reaches 4096 + 16 * 4093 bytes back.
# zipfile (numpy) searches the last 22 + 0x10000 bytes: both reach past the longest comment.
_MINIZ_REACH = 4096 + 16 * 4093
_MAX_ENTRIES = 1_000_000
# What is read at a local header: the header and its name, then (scan_zip's peek) the
# first bytes of the data a few hundred bytes on, each through an 8 KiB buffered read.
_HEADER_SPAN = 8 << 10
_PREFETCH = 256  # local headers asked for at once (at most 2 MiB in flight)


class ZipError(Exception):
    """The archive's directory cannot be read (internal)."""


class NoDirectory(ZipError):
    """An end-record signature with no central directory where it says (not a zip)."""


@dataclass
class ZipEntry:
    """One central-directory record and where its data really is."""

    name: str
    method: int
    flags: int
    compressed_size: int
    size: int
    header_offset: int  # absolute offset of the local header
    data_offset: int = -1  # absolute offset of the data, from the local header's lengths
    local_name: bytes = b""
    local_flags: int = 0
    external_attr: int = 0

    @property
    def lower(self) -> str:
        return self.name.lower()

    @property
    def miniz_directory(self) -> bool:
        """Whether miniz (torch) takes the entry for a directory: a name ending in '/' or
        the DOS directory attribute. It then reads none of the entry's bytes, local header
        included, and reports success."""
        return self.name.endswith("/") or bool(self.external_attr & 0x10)


@dataclass
class ZipDirectory:
    """The archive's records in central-directory order, plus what looked wrong."""

    entries: list[ZipEntry]
    prefix: int  # bytes before the archive (its start offset in the file)
    anomalies: list[tuple[str, int | None]] = field(default_factory=list)  # (message, offset)
    end: int = 0  # offset just after the end-of-central-directory record and comment
    # Other readers' readings of the same end record that find other records.
    others: list[ZipDirectory] = field(default_factory=list)
    # Why readings that found a central directory could not be parsed here, when another
    # reading could: a reader may still read them (zipfile ignores the entry count).
    unread: list[str] = field(default_factory=list)


def find_eocd(fh: BinaryIO, size: int) -> int | None:
    """Offset of the last end-of-central-directory record, as zip readers search for it.

    Like miniz (torch) and zipfile (numpy): the signature closest to the end wins, whatever
    its comment length says. Walking back to an earlier record whose comment "fits" would
    let a decoy directory hide the one the loaders read (the mismatch is an anomaly). The
    search reaches as far back as miniz's does, farther than the longest comment: a record
    followed by more than 0xFFFF bytes is still torch's (the bytes after it are SH113).
    """
    if size < 22:
        return None
    tail_len = min(size, _MINIZ_REACH)
    fh.seek(size - tail_len)
    tail = fh.read(tail_len)
    pos = tail.rfind(_EOCD, 0, len(tail) - 22 + 4)
    return None if pos < 0 else size - tail_len + pos


def read_directory(fh: BinaryIO, size: int, eocd: int) -> ZipDirectory:
    """Parse the central directory that the record at ``eocd`` describes.

    zipfile (numpy) and miniz (torch) can locate different directories from one end
    record: zipfile takes a zip64 record exactly 76 bytes back and shifts offsets by the
    bytes before the archive; miniz takes the zip64 record the locator points at, falls
    back to the classic record when that one's signature is wrong, and uses offsets as
    they are. Every distinct reading that parses is returned (the first, the others in
    ``others``). ``NoDirectory`` means no reading finds a central record at all (bytes
    that merely contain the end-record signature); any other ``ZipError`` is an archive
    the scanner cannot read, which callers report. A reading that finds a central record
    it cannot parse while another reading parses is never dropped: it is listed in
    ``unread`` for callers to report.
    """
    fh.seek(eocd)
    rec = fh.read(22)
    (_, disk, cd_disk, n_disk, n_total, cd_size, cd_offset, comment_len) = struct.unpack(
        "<4sHHHHIIH", rec
    )
    anomalies: list[tuple[str, int | None]] = []
    end = eocd + 22 + comment_len
    if end > size:
        anomalies.append(("end-of-directory comment runs past the end of the file", eocd))
        end = size
    if disk != 0 or cd_disk != 0 or n_disk != n_total:
        anomalies.append(("multi-disk archive fields are set", eocd))
    classic = (n_total, cd_size, cd_offset)
    # (entries, directory size, directory offset, bytes before the archive) per reader.
    readings: list[tuple[int, int, int, int]] = []
    # miniz looks for a zip64 locator only when the end record lies 76 bytes or more into
    # the file (room for a locator and a zip64 record): nearer the start it reads the
    # classic record whatever precedes it. (zipfile, finding a locator there, seeks before
    # the file and fails.)
    fh.seek(max(0, eocd - 20))
    locator = fh.read(20) if eocd >= 20 + 56 else b""
    if locator[:4] == _EOCD64_LOCATOR:
        # zipfile: the record 76 bytes back, else the classic record; offsets shifted.
        fixed_at = eocd - 20 - 56
        fixed = _zip64_record(fh, fixed_at)
        if fixed is None:
            anomalies.append(("zip64 end record is missing or invalid; readers fall back to "
                              "the classic end record", eocd - 20))
            readings.append((*classic, eocd - cd_size - cd_offset))
        else:
            readings.append((*fixed, fixed_at - fixed[1] - fixed[2]))
        # miniz: the record the locator names (an offset past the file ends the read).
        (located_at,) = struct.unpack_from("<Q", locator, 8)
        if located_at != fixed_at:
            anomalies.append(("zip64 locator points elsewhere than its record", eocd - 20))
        if located_at <= size - 56:
            located = _zip64_record(fh, located_at)
            readings.append((*(located or classic), 0))
    else:
        if n_total == 0xFFFF or cd_size == 0xFFFFFFFF or cd_offset == 0xFFFFFFFF:
            anomalies.append(("zip64 values without a zip64 locator", eocd))
        readings.append((*classic, eocd - cd_size - cd_offset))
        readings.append((*classic, 0))
    directories: list[ZipDirectory] = []
    errors: list[str] = []
    found_central = False
    for reading in dict.fromkeys(readings):
        count, dir_size, dir_offset, prefix = reading
        # zipfile reads on with a negative shift (a directory offset larger than where the
        # directory lies): only a directory starting before the file is refused.
        if not 0 <= dir_offset + prefix < size:
            continue
        fh.seek(dir_offset + prefix)
        if not ((count == 0 and dir_size == 0) or fh.read(4) == _CENTRAL):
            continue
        found_central = True
        try:
            directories.append(_read_reading(fh, size, reading, list(anomalies), end))
        except ZipError as exc:
            errors.append(str(exc))
    if not directories:
        if not found_central:
            raise NoDirectory("no central directory where the end record says")
        raise ZipError("; ".join(dict.fromkeys(errors)))
    first, *rest = directories
    first.unread = list(dict.fromkeys(errors))
    seen = {_key(first)}
    for other in rest:
        if _key(other) not in seen:
            seen.add(_key(other))
            first.others.append(other)
            first.anomalies.append(("zip readers locate different central directories "
                                    "(zipfile and miniz)", eocd))
    return first


def _key(directory: ZipDirectory) -> tuple[tuple[str | int, ...], ...]:
    """What makes two readings read the same: every central field a reader acts on. Two
    directories that agree on names, offsets and sizes can still differ in a method or an
    attribute that makes miniz read other bytes (a directory's: none at all)."""
    return tuple((e.name, e.header_offset, e.compressed_size, e.size, e.method, e.flags,
                  e.external_attr) for e in directory.entries)


def _zip64_record(fh: BinaryIO, at: int) -> tuple[int, int, int] | None:
    """(entries, directory size, directory offset) of a zip64 end record, or None when
    there is none at ``at``."""
    if at < 0:
        return None
    fh.seek(at)
    rec64 = fh.read(56)
    if len(rec64) < 56 or rec64[:4] != _EOCD64:
        return None
    n_total, cd_size, cd_offset = struct.unpack_from("<QQQ", rec64, 32)
    return n_total, cd_size, cd_offset


def _read_reading(fh: BinaryIO, size: int, reading: tuple[int, int, int, int],
                  anomalies: list[tuple[str, int | None]], end: int) -> ZipDirectory:
    n_total, cd_size, cd_offset, prefix = reading
    if n_total > _MAX_ENTRIES:
        raise ZipError(f"archive declares {n_total} entries")
    fh.seek(cd_offset + prefix)
    central = fh.read(cd_size)
    if len(central) < cd_size:
        raise ZipError("central directory is truncated")
    if prefix < 0:
        anomalies.append((f"the directory lies {-prefix} bytes before where the end record "
                          "says; zipfile shifts every entry's offset back by as much",
                          cd_offset + prefix))
    entries = _parse_central(central, n_total, prefix, anomalies, cd_offset + prefix)
    _read_local_headers(fh, size, entries, anomalies)
    _check_layout(entries, anomalies, cd_offset + prefix)
    return ZipDirectory(entries=entries, prefix=prefix, anomalies=anomalies, end=end)


def _parse_central(
    central: bytes, count: int, prefix: int, anomalies: list[tuple[str, int | None]], base: int
) -> list[ZipEntry]:
    entries: list[ZipEntry] = []
    pos = 0
    for _ in range(count):
        if central[pos : pos + 4] != _CENTRAL or pos + 46 > len(central):
            raise ZipError("central directory record is malformed")
        pos = _parse_record(central, pos, prefix, anomalies, base, entries)
    # miniz reads as many records as the end record counts, zipfile (numpy) every record in
    # the directory's byte size: records past the count are seen by numpy alone.
    extra = 0
    while central[pos : pos + 4] == _CENTRAL and pos + 46 <= len(central):
        pos = _parse_record(central, pos, prefix, anomalies, base, entries)
        extra += 1
        if len(entries) > _MAX_ENTRIES:
            raise ZipError(f"archive holds more than {_MAX_ENTRIES} entries")
    if extra:
        anomalies.append((f"central directory holds {extra} records more than its end record "
                          "counts", base))
    return entries


def _parse_record(
    central: bytes, pos: int, prefix: int, anomalies: list[tuple[str, int | None]], base: int,
    entries: list[ZipEntry],
) -> int:
    """Parse the central record at ``pos`` into ``entries``; returns the next position."""
    (flags, method, csize, usize, name_len, extra_len, comment_len, external_attr,
     lh_offset) = struct.unpack_from("<HH8xIIHHH4xII", central, pos + 8)
    raw_name = central[pos + 46 : pos + 46 + name_len]
    extra = central[pos + 46 + name_len : pos + 46 + name_len + extra_len]
    if _zip64_fields(extra) > 1:
        # zipfile applies every zip64 field in turn (a value still 0xFFFFFFFF after one is
        # replaced by the next), miniz only the first: they would read different data.
        raise ZipError("a central record carries several zip64 extra fields, which zip "
                       "readers apply differently")
    if csize == 0xFFFFFFFF or usize == 0xFFFFFFFF or lh_offset == 0xFFFFFFFF:
        usize, csize, lh_offset = zip64_sizes(extra, usize, csize, lh_offset)
    name = raw_name.decode("utf-8" if flags & 0x800 else "cp437", "replace")
    if flags & 0x1:
        anomalies.append((f"{name}: marked encrypted in the central directory", base + pos))
    entries.append(ZipEntry(name=name, method=method, flags=flags, compressed_size=csize,
                            size=usize, header_offset=lh_offset + prefix,
                            external_attr=external_attr))
    pos += 46 + name_len + extra_len + comment_len
    if pos > len(central):
        raise ZipError("central directory record is malformed")
    return pos


def _zip64_fields(extra: bytes) -> int:
    count, pos = 0, 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, pos)
        count += tag == 0x0001
        pos += 4 + length
    return count


def zip64_sizes(extra: bytes, usize: int, csize: int, offset: int) -> tuple[int, int, int]:
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, pos)
        if tag == 0x0001:
            data = extra[pos + 4 : pos + 4 + length]
            values = [struct.unpack_from("<Q", data, i)[0] for i in range(0, len(data) - 7, 8)]
            it = iter(values)
            if usize == 0xFFFFFFFF:
                usize = next(it, usize)
            if csize == 0xFFFFFFFF:
                csize = next(it, csize)
            if offset == 0xFFFFFFFF:
                offset = next(it, offset)
            break
        pos += 4 + length
    return usize, csize, offset


def _read_local_headers(
    fh: BinaryIO, size: int, entries: list[ZipEntry], anomalies: list[tuple[str, int | None]]
) -> None:
    # Loaders read a local header only when they open its entry: a missing one makes that
    # entry unreadable (data_offset stays -1; zipfile and miniz both refuse it), never the
    # whole archive.
    for index, entry in enumerate(entries):
        if index % _PREFETCH == 0:
            # Ask for the next headers all at once: one round of disk reads, not one each.
            prefetch(fh, ((e.header_offset, _HEADER_SPAN)
                          for e in entries[index : index + _PREFETCH]))
        if entry.header_offset < 0:  # zipfile's negative seek fails: no loader opens it
            anomalies.append((f"{entry.name}: local header would lie "
                              f"{-entry.header_offset} bytes before the file", None))
            continue
        fh.seek(entry.header_offset)
        header = fh.read(30)
        if len(header) < 30 or header[:4] != _LOCAL:
            anomalies.append((f"{entry.name}: local header missing at {entry.header_offset}",
                              entry.header_offset))
            continue
        local_flags, _method = struct.unpack_from("<HH", header, 6)
        name_len, extra_len = struct.unpack_from("<HH", header, 26)
        entry.local_flags = local_flags
        entry.local_name = fh.read(name_len)
        entry.data_offset = entry.header_offset + 30 + name_len + extra_len
        if entry.local_name != entry.name.encode("utf-8" if entry.flags & 0x800 else "cp437",
                                                 "replace"):
            anomalies.append((f"{entry.name}: local header names it {entry.local_name!r}",
                              entry.header_offset))
        if (local_flags ^ entry.flags) & 0x1:
            anomalies.append((f"{entry.name}: local header encryption flag differs from the "
                              "central directory", entry.header_offset))
        if entry.data_offset + entry.compressed_size > size:
            # miniz refuses the entry, but zipfile (numpy.load) reads lazily: a deflated
            # object array's pickle runs before the missing bytes are asked for. The entry
            # is analyzed as far as the file goes.
            anomalies.append((f"{entry.name}: data extends past the end of the file",
                              entry.header_offset))


def _check_layout(
    entries: list[ZipEntry], anomalies: list[tuple[str, int | None]], cd_start: int
) -> None:
    # miniz (torch) finds a name case-insensitively, zipfile (numpy) exactly: names that
    # differ only in case are one name to torch, which reads an archive only through its
    # .pkl records (torch.load, TorchScript, torch.package); an archive without one is read
    # by zipfile alone, where ``w.npy`` and ``W.npy`` are two arrays (numpy.savez keys).
    # zipfile cuts a name at its first NUL.
    miniz_reads = any(".pkl" in e.lower for e in entries)
    seen: set[str] = set()
    for entry in entries:
        keys = {"zipfile:" + entry.name.split("\0", 1)[0]}
        if miniz_reads:
            keys.add("miniz:" + entry.lower)
        if keys & seen:
            anomalies.append((f"duplicate entry name {entry.name!r}", entry.header_offset))
        seen |= keys
        if entry.method == 0 and entry.compressed_size != entry.size:
            anomalies.append((f"{entry.name}: stored entry whose sizes differ",
                              entry.header_offset))
    spans = sorted((e.header_offset, e.data_offset + e.compressed_size, e.name) for e in entries
                   if e.data_offset >= 0)
    for (_, end_a, name_a), (start_b, _, name_b) in itertools.pairwise(spans):
        if start_b < end_a:
            anomalies.append((f"entries {name_a!r} and {name_b!r} overlap", start_b))
    if spans and spans[-1][1] > cd_start:
        anomalies.append((f"entry {spans[-1][2]!r} overlaps the central directory", cd_start))


class _Inflater:
    """A raw-deflate stream over a file region, decompressing on demand with bounded output.

    Every compressed byte consumed and every byte produced is charged to the file's
    ``budget``: records may share one deflate stream (empty stored blocks cost input and
    give nothing; a long run of zeros costs output), so the work is bounded per file, not
    per record. When the budget is spent the stream ends and ``spent`` says so.
    """

    def __init__(self, region: FileRegion, budget: OpBudget | None = None):
        self._region = region
        self._z = zlib.decompressobj(-15)
        self._pending = b""
        self._done = False
        self._budget = budget
        self.error = ""
        self.spent = False

    def read(self, n: int) -> bytes:
        out = [self._pending[:n]]
        have = len(out[0])
        self._pending = self._pending[have:]
        while have < n and not self._done and not self._z.eof:
            if self._budget is not None and self._budget.inflate_left <= 0:
                self.spent = True
                break
            data = self._z.unconsumed_tail or self._region.read(1 << 16)
            try:
                if data:
                    chunk = self._z.decompress(data, n - have)
                else:
                    # The input is used up, but zlib may still hold output (the rest of a
                    # long match); without this a record's last bytes would be lost.
                    chunk = self._z.flush()
                    self._done = True
            except zlib.error as exc:
                self.error = f"deflate data is corrupt: {exc}"
                break
            if self._budget is not None:
                consumed = len(data) - len(self._z.unconsumed_tail)
                self._budget.inflate_left -= consumed + len(chunk)
            self._pending = chunk[n - have:]
            out.append(chunk[: n - have])
            have += len(out[-1])
        return b"".join(out)


def open_entry(fh: BinaryIO, entry: ZipEntry, limit: int, budget: OpBudget | None = None,
               ) -> tuple[ByteSource, _Inflater | None]:
    """A source over the entry's uncompressed bytes (method 0 or 8), capped at ``limit``;
    inflation is charged to ``budget`` (the file's)."""
    region = FileRegion(fh, entry.data_offset, entry.compressed_size)
    if entry.method == 0:
        return FileRegion(fh, entry.data_offset, min(entry.size, entry.compressed_size)), None
    inflater = _Inflater(region, budget)

    def restart() -> _Inflater:
        return _Inflater(FileRegion(fh, entry.data_offset, entry.compressed_size), budget)

    return (StreamSource(inflater, min(limit, entry.size), restart),  # type: ignore[arg-type]
            inflater)
