"""torch's oldest format: a tar archive with ``storages``, ``tensors`` and ``pickle`` members.

``torch.load`` still reads it when ``weights_only=False``. The ``pickle`` member
is the object; ``storages`` and ``tensors`` interleave small pickles with raw
records, which are parsed exactly as torch's reader does so that every pickle in
them is analyzed too.
"""

from __future__ import annotations

import struct
import tarfile
from typing import BinaryIO

from safehub._scanner.context import FileScan
from safehub._scanner.fmt_pickle import STORAGE_ELEMENT_SIZE
from safehub._scanner.judge import Loader, judge_stream
from safehub._scanner.pickle_vm import Global, PickleCursor, StreamResult
from safehub._scanner.source import FileRegion, Truncated

__all__ = ["looks_like_tar", "scan_tar"]

_MAX_RECORDS = 1_000_000


def looks_like_tar(head: bytes) -> bool:
    """Whether ``tarfile.open(mode="r:")`` (torch's first try) accepts the first header.

    tarfile checks the header checksum, not the ``ustar`` magic: old v7 archives have none.
    """
    if len(head) < 512:
        return False
    if head[257:262] == b"ustar":
        return True
    field = head[148:156]
    if field[0] in (0o200, 0o377) or head[:512].count(0) == 512:
        return False
    try:
        stored = int(field.split(b"\0", 1)[0].decode("ascii").strip() or "0", 8)
    except (UnicodeDecodeError, ValueError):
        return False
    rest = head[:148] + b" " * 8 + head[156:512]
    unsigned = sum(rest)
    signed = sum(b - 256 if b > 127 else b for b in rest)
    return stored in (unsigned, signed)


def scan_tar(scan: FileScan, fh: BinaryIO) -> None:
    scan.format = "torch-tar"
    fh.seek(0)
    try:
        with tarfile.open(fileobj=fh, mode="r:") as tar:
            members = {m.name: m for m in tar.getmembers()}
    except (tarfile.TarError, EOFError) as exc:
        scan.add("SH110", f"tar archive cannot be read: {exc}")
        return
    wanted = ("storages", "tensors", "pickle")
    if not any(name in members for name in wanted):
        scan.format = "unknown"
        scan.add("SH190", "tar archive without torch's storages/tensors/pickle members")
        return
    for name in wanted:
        member = members.get(name)
        if member is None:
            continue
        if not member.isfile():
            # torch extracts the member with tarfile, which follows a hard link to another
            # member's data (and a symbolic link to wherever it points).
            scan.add("SH114", f"tar member {name!r} is a link or special file, not the data "
                     "itself", location=name, subject="tar-link")
            continue
        src = FileRegion(fh, member.offset_data, member.size)
        cursor = PickleCursor(src, limits=scan.options.limits, torch_names=True)
        scan.records.append(name)
        if name == "pickle":
            result = cursor.stream()
            judge_stream(scan, result, name, Loader.TORCH_LEGACY)
        else:
            _scan_records(scan, cursor, name)


def _scan_records(scan: FileScan, cursor: PickleCursor, name: str) -> None:
    """``storages``: count, then (key, location, type) + raw storage per record, then views.
    ``tensors``: count, then (key, storage, type) + fixed binary shape record per tensor."""
    count = _stream(scan, cursor, name)
    if count is None:
        return
    if not isinstance(count.value, int) or not 0 <= count.value <= _MAX_RECORDS:
        scan.add("SH140", f"{name}: record count is not a small integer", location=name)
        return
    try:
        for _ in range(count.value):
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
