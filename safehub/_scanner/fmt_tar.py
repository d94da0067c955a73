"""torch's oldest format: a tar archive with ``storages``, ``tensors`` and ``pickle`` members.

``torch.load`` (``_legacy_load``) still reads it when ``weights_only=False``: it calls
``tarfile.open(fileobj=f, mode="r:")`` and takes the raw-pickle path only when that
raises ``tarfile.TarError``. The decision "tar or not" and every member's bytes are
therefore taken from the real ``tarfile`` module, never from a model of it: a header
whose checksum is written in base-256, PAX and GNU long names, GNU and PAX sparse
members (read with their holes expanded, as ``extractfile`` returns them) and the
last-of-duplicate-names lookup of ``getmember`` all follow by construction.

Hostile archives cannot cost unbounded work: the bytes tarfile reads to parse headers
(PAX records, long names, sparse maps, which it holds in memory) are capped for the whole
archive, and so is the number of members; both end in SH191.
The ``pickle`` member is the object; ``storages`` and ``tensors`` interleave small
pickles with raw records, which are parsed exactly as torch's reader does so that
every pickle in them is analyzed too.
"""

from __future__ import annotations

import struct
import tarfile
from typing import IO, Any, BinaryIO

from safehub._scanner.context import FileScan
from safehub._scanner.fmt_pickle import STORAGE_ELEMENT_SIZE
from safehub._scanner.judge import Loader, judge_stream
from safehub._scanner.pickle_vm import Global, PickleCursor, StreamResult
from safehub._scanner.source import ByteSource, Truncated
from safehub._tarheaders import PaxBoundedInfo, TooManyPaxKeys

__all__ = ["MAX_HEADER_READ", "MAX_MEMBERS", "TarProbe", "probe_tar", "read_member", "scan_tar"]

_MAX_RECORDS = 1_000_000
# Bytes tarfile may read while parsing the headers of one archive (header blocks, PAX
# records, GNU long names, sparse maps). Real torch tars read about 2 KiB.
MAX_HEADER_READ = 8 << 20
MAX_MEMBERS = 10_000
_WANTED = ("storages", "tensors", "pickle")


class _HeaderTooBig(Exception):
    """tarfile asked for more header bytes in one read than MAX_HEADER_READ."""


class _PaxBounded(PaxBoundedInfo):
    """Too many pax keys are headers too big to parse (SH191), as MAX_HEADER_READ's are."""

    def _proc_member(self, archive: Any) -> Any:
        try:
            return super()._proc_member(archive)
        except TooManyPaxKeys:
            raise _HeaderTooBig() from None


class _CappedFile:
    """The scanned file as tarfile sees it: reads are budgeted while headers are parsed."""

    def __init__(self, fh: BinaryIO):
        self._fh = fh
        self.capped = True
        self._used = 0

    def read(self, n: int = -1) -> bytes:
        if self.capped:
            if n is None or n < 0:
                raise _HeaderTooBig()
            self._used += n
            if self._used > MAX_HEADER_READ:
                raise _HeaderTooBig()
        return self._fh.read(n)

    def seek(self, pos: int, whence: int = 0) -> int:
        return self._fh.seek(pos, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def seekable(self) -> bool:
        return True


class TarProbe:
    """The outcome of torch's first step: ``tarfile.open(fileobj=f, mode="r:")``.

    ``tar`` is the open archive when tarfile accepted the file; ``problem`` says why the
    answer could not be had safely (a header too big to read, or an exception other than
    ``TarError``, which torch.load would let escape instead of falling back).
    """

    def __init__(self, tar: tarfile.TarFile | None, capped: _CappedFile | None,
                 problem: str = ""):
        self.tar = tar
        self.capped = capped
        self.problem = problem

    @property
    def accepted(self) -> bool:
        """Whether torch.load would take the tar path (or could not be shown not to)."""
        return self.tar is not None or bool(self.problem)


def probe_tar(fh: BinaryIO) -> TarProbe:
    """Open ``fh`` exactly as torch's legacy loader does, from offset 0."""
    fh.seek(0)
    capped = _CappedFile(fh)
    try:
        # Kept open for scan_tar; the archive wraps the caller's file, which stays open.
        tar = tarfile.open(  # noqa: SIM115
            fileobj=capped, mode="r:", format=tarfile.PAX_FORMAT, tarinfo=_PaxBounded)  # type: ignore[call-overload]
    except tarfile.TarError:
        return TarProbe(None, None)
    except _HeaderTooBig:
        return TarProbe(None, None, f"tar headers take more than {MAX_HEADER_READ} bytes to parse")
    # tarfile raises assorted types on hostile headers; torch.load would fail with them
    # rather than fall back, and the scanner cannot say what else a reader would do.
    # (tarfile reads the header after a long name or pax header recursively: a long run
    # of them is a RecursionError.)
    except (ValueError, OverflowError, UnicodeError, EOFError, OSError, RecursionError) as exc:
        return TarProbe(None, None, f"tarfile fails on the first header: {exc!r}")
    return TarProbe(tar, capped)


def _load_members(tar: tarfile.TarFile) -> None:
    """Read every header (what getmembers() does), within the member-count bound."""
    count = 0
    while tar.next() is not None:
        count += 1
        if count > MAX_MEMBERS:
            raise _TooManyMembers()


class _TooManyMembers(Exception):
    """The archive has more than MAX_MEMBERS members."""


def read_member(fh: BinaryIO, name: str, limit: int) -> bytes | None:
    """Member ``name`` of a legacy torch tar as torch reads it, when ``fh`` is such a tar
    and the member is a regular file of at most ``limit`` bytes; else None."""
    probe = probe_tar(fh)
    tar, capped = probe.tar, probe.capped
    if tar is None or capped is None:
        return None
    try:
        _load_members(tar)
        capped.capped = False
        info = tar.getmember(name)
        if not info.isfile() or info.size > limit:
            return None
        data = tar.extractfile(info)
        return data.read(limit) if data is not None else None
    except (KeyError, tarfile.TarError, _HeaderTooBig, _TooManyMembers, ValueError,
            OverflowError, UnicodeError, EOFError, RecursionError):
        return None


def scan_tar(scan: FileScan, probe: TarProbe) -> None:
    """Analyze the members torch's legacy loader reads, as tarfile gives them."""
    if scan.format == "unknown":
        scan.format = "torch-tar"
    tar, capped = probe.tar, probe.capped
    if tar is None or capped is None:
        scan.add("SH191", f"tar archive not analyzed: {probe.problem}")
        return
    try:
        _load_members(tar)
    except _TooManyMembers:
        scan.add("SH191", f"tar archive has more than {MAX_MEMBERS} members")
        return
    except tarfile.TarError as exc:
        # torch.load gets this TarError from tar.extract() and falls back to reading the
        # file as a raw pickle; that reading is probed separately.
        scan.add("SH110", f"tar archive cannot be read: {exc}")
        return
    except _HeaderTooBig:
        scan.add("SH191", f"tar headers take more than {MAX_HEADER_READ} bytes to parse")
        return
    except (ValueError, OverflowError, UnicodeError, EOFError, RecursionError) as exc:
        scan.add("SH110", f"tar archive cannot be read: {exc!r}")
        return
    capped.capped = False
    members: dict[str, tarfile.TarInfo] = {}
    for name in _WANTED:
        try:
            members[name] = tar.getmember(name)  # the last member of that name, as torch
        except KeyError:
            continue
    if not members:
        if scan.format == "torch-tar":
            scan.format = "unknown"
        scan.add("SH190", "tar archive without torch's storages/tensors/pickle members")
        return
    for name in _WANTED:
        member = members.get(name)
        if member is None:
            continue
        if not member.isfile():
            # torch extracts the member with tarfile, which follows a hard link to another
            # member's data (and a symbolic link to wherever it points).
            scan.add("SH114", f"tar member {name!r} is a link or special file, not the data "
                     "itself", location=name, subject="tar-link")
            continue
        if member.issparse():
            # torch extracts storages and tensors to disk (tar.extract): overlapping
            # segments are written in order (the last wins), a segment past the end
            # makes torch re-read the whole file as raw pickles. Never written by torch.
            scan.add("SH161", f"tar member {name!r} is a sparse file, which torch extracts "
                     "differently from how it reads", location=name, subject="tar-sparse")
        data = tar.extractfile(member)
        if data is None:
            scan.add("SH110", f"tar member {name!r} has no readable data", location=name)
            continue
        src = MemberSource(data, member.size)
        cursor = PickleCursor(src, limits=scan.options.limits, torch_names=True)
        scan.records.append(name)
        if name == "pickle":
            result = cursor.stream()
            judge_stream(scan, result, name, Loader.TORCH_TAR)
        else:
            _scan_records(scan, cursor, name)


class MemberSource:
    """A tar member's bytes exactly as ``TarFile.extractfile`` returns them.

    Sparse holes read as NUL bytes; skipping seeks (tarfile maps the position through
    the sparse map), so skipping tensor data costs nothing. A short archive reads as
    the end of the member (the analyzers report it truncated).
    """

    def __init__(self, data: IO[bytes], size: int):
        self._data = data
        self._size = size
        self._pos = 0

    def read(self, n: int) -> bytes:
        n = max(0, min(n, self._size - self._pos))
        if n == 0:
            return b""
        self._data.seek(self._pos)
        try:
            chunk = self._data.read(n)
        except tarfile.ReadError:
            self._size = self._pos  # "unexpected end of data": nothing more is readable
            return b""
        self._pos += len(chunk)
        return chunk

    def skip(self, n: int) -> int:
        n = max(0, min(n, self._size - self._pos))
        self._pos += n
        return n

    def tell(self) -> int:
        return self._pos

    def remaining(self) -> int | None:
        return self._size - self._pos

    def reopen(self) -> ByteSource | None:
        # Every read seeks to its own position first, so a second view over the same
        # member file starts at its beginning.
        return MemberSource(self._data, self._size)


def _scan_records(scan: FileScan, cursor: PickleCursor, name: str) -> None:
    """``storages``: count, then (key, location, type) + raw storage per record, then views.
    ``tensors``: count, then (key, storage, type) + fixed binary shape record per tensor."""
    count = _stream(scan, cursor, name)
    if count is None:
        return
    unknown = (not isinstance(count.value, int) or isinstance(count.value, bool)
               or not 0 <= count.value <= _MAX_RECORDS)
    if unknown:
        # torch runs range() on whatever the pickle returned (a computed int, a negative
        # one) and reads on: every record that still parses is analyzed.
        scan.add("SH140", f"{name}: record count is not a small integer", location=name)
    total = count.value if isinstance(count.value, int) and not unknown else _MAX_RECORDS
    try:
        for _ in range(total):
            if unknown and cursor.at_eof():
                return
            args = _stream(scan, cursor, name)
            if args is None:
                return
            if name == "storages":
                size = _element_size(args.value)
                if size is None:
                    scan.add("SH140", "storage record without a known storage type",
                             location=name, offset=args.start)
                    return
                (numel,) = struct.unpack("<q", cursor.take(8))
                if numel < 0:
                    raise Truncated()
                cursor.skip(numel * size)
            else:
                (ndim,) = struct.unpack("<i", cursor.take(4))
                if not 0 <= ndim <= 64:
                    scan.add("SH140", f"tensor record with {ndim} dimensions", location=name)
                    return
                cursor.skip(4 + 16 * ndim + 8)
        if name == "storages" and _stream(scan, cursor, name) is None:
            return
    except Truncated:
        scan.add("SH111", f"{name}: record is truncated", location=name, offset=cursor.offset())
        return
    if not cursor.at_eof():
        scan.add("SH113", f"bytes follow the last record of {name}", location=name,
                 offset=cursor.offset())


def _stream(scan: FileScan, cursor: PickleCursor, name: str) -> StreamResult | None:
    result = cursor.stream()
    judge_stream(scan, result, name, Loader.TORCH_LEGACY)
    return result if result.stopped else None


def _element_size(args: object) -> int | None:
    if not (isinstance(args, tuple) and len(args) == 3 and isinstance(args[2], Global)):
        return None
    type_name = args[2].effective.rsplit(".", 1)[-1]
    if not type_name.endswith("Storage"):
        return None
    return STORAGE_ELEMENT_SIZE.get(type_name[: -len("Storage")])
