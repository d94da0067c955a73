"""Files that are pickles at the top level: plain pickles, joblib dumps, torch legacy format.

torch's legacy (non-zip) format is a sequence of five pickles -- magic number,
protocol version, system info, the object, the storage keys -- followed by each
storage as an 8-byte element count and raw bytes. ``pickle.load`` reads only the
first stream, ``torch.load`` all five, ``joblib.load`` reads array bytes in the
middle of its stream: every stream any of them would read is analyzed, and
anything left over is a finding.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from safehub._scanner.context import FileScan
from safehub._scanner.judge import Loader, judge_stream
from safehub._scanner.pickle_vm import Global, PickleCursor, StreamResult, SymList, render
from safehub._scanner.source import ByteSource, BytesSource, Truncated

Reopen = Callable[[int, int], ByteSource]  # (absolute offset, length) -> a fresh source

__all__ = ["LEGACY_MAGIC", "STORAGE_ELEMENT_SIZE", "scan_pickle_file"]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
STORAGE_ELEMENT_SIZE = {
    "BFloat16": 2, "Bool": 1, "Byte": 1, "Char": 1, "ComplexDouble": 16, "ComplexFloat": 8,
    "Double": 8, "Float": 4, "Half": 2, "Int": 4, "Long": 8, "QInt32": 4, "QInt8": 1,
    "QUInt2x4": 1, "QUInt4x2": 1, "QUInt8": 1, "Short": 2, "Untyped": 1,
}
_MAX_EXTRA_STREAMS = 64
# Pickles torch's legacy raw reader loads one after another (see the module docstring).
_LEGACY_READS = 5
_TO_THE_END = 1 << 62  # a region length that lets a probe read on to the end of the file


def scan_pickle_file(scan: FileScan, src: ByteSource, *, location: str = "", base: int = 0,
                     reopen: Reopen | None = None) -> tuple[PickleCursor, bool]:
    """Analyze a top-level pickle file.

    Returns the cursor (positioned after what was read) and whether the content is a
    pickle at all: bytes that fail at their first opcodes without a protocol header,
    an import or a call are not one (nothing would run), and get no findings here.
    """
    cursor = PickleCursor(src, base=base, limits=scan.options.limits, joblib=True)
    first = cursor.stream()
    # The machine stops where the real parsers stop, so bytes that fail early having done
    # nothing are harmless; a stream stopped by an analysis limit is not known to be.
    if not first.stopped and not first.limit and not _did_anything(first):
        return cursor, False
    scan.records.append(location or "pickle")
    judge_stream(scan, first, location, Loader.PICKLE)
    _probe_inline_arrays(scan, first, location, reopen)
    scan.format = _name_format(first)
    if not first.stopped or cursor.at_eof():
        return cursor, True
    second = cursor.stream()
    if second.stopped and second.value == LEGACY_PROTOCOL and not second.globals:
        scan.format = "torch-legacy"
        _scan_legacy_rest(scan, cursor, first, second, location, reopen)
        return cursor, True
    _scan_extra_streams(scan, cursor, second, location, reopen)
    return cursor, True


def _did_anything(stream: StreamResult) -> bool:
    return bool(stream.protocol or stream.globals or stream.calls or stream.computed
                or stream.extensions or stream.persistent or stream.ops > 16)


def _name_format(first: StreamResult) -> str:
    if any(g.effective == "joblib.numpy_pickle.NumpyArrayWrapper" for g in first.globals):
        return "joblib"
    return "pickle"


def _scan_extra_streams(scan: FileScan, cursor: PickleCursor, stream: StreamResult,
                        location: str, reopen: Reopen | None) -> None:
    """Everything after the first STOP: more pickles (SH112) or other bytes (SH113)."""
    count = 0
    while True:
        count += 1
        # A stream cut short still ran what came before the cut: an EXT import (a module
        # the loading process registered with copyreg) or a computed one. One the analysis
        # stopped at a limit is no proof of anything: torch reads on to its end (SH191).
        parsed_something = stream.stopped or bool(stream.globals or stream.calls
                                                  or stream.extensions or stream.computed
                                                  or stream.limit)
        if not parsed_something:
            scan.add("SH113", "bytes follow the end of the pickle", location=location,
                     offset=stream.start)
            return
        scan.add("SH112", f"pickle stream #{count + 1} follows the first one",
                 location=location, offset=stream.start, subject=f"stream-{count + 1}")
        judge_stream(scan, stream, location, Loader.PICKLE)
        _probe_inline_arrays(scan, stream, location, reopen)
        if not stream.stopped or cursor.at_eof():
            return
        if count >= _MAX_EXTRA_STREAMS:
            scan.add("SH191", f"more than {_MAX_EXTRA_STREAMS} pickle streams",
                     location=location, offset=cursor.offset())
            return
        stream = cursor.stream()


def _scan_legacy_rest(scan: FileScan, cursor: PickleCursor, magic: StreamResult,
                      protocol: StreamResult, location: str, reopen: Reopen | None) -> None:
    if magic.value != LEGACY_MAGIC:
        scan.add("SH110", f"legacy torch file whose magic number is {render(magic.value)}, "
                 "not a constant", location=location, offset=magic.start, subject="magic")
    judge_stream(scan, protocol, location, Loader.TORCH_LEGACY)
    _probe_inline_arrays(scan, protocol, location, reopen)
    streams = [cursor.stream() for _ in range(3)]  # system info, object, storage keys
    for stream in streams:
        judge_stream(scan, stream, location, Loader.TORCH_LEGACY)
        _probe_inline_arrays(scan, stream, location, reopen)
        if not stream.stopped:
            return
    main, keys_stream = streams[1], streams[2]
    storages = _legacy_storages(main)
    keys = keys_stream.value
    if not isinstance(keys, SymList):
        scan.add("SH140", f"storage key list is {render(keys)}, not a list", location=location,
                 offset=keys_stream.start)
        return
    for key in keys.items:
        element_size = storages.get(str(key)) if isinstance(key, (str, int)) else None
        if element_size is None:
            scan.add("SH140", f"storage {render(key)} has no known element size",
                     location=location, offset=cursor.offset())
            return
        try:
            (numel,) = struct.unpack("<q", cursor.take(8))
            if numel < 0:
                raise Truncated()
            cursor.skip(numel * element_size)
        except Truncated:
            scan.add("SH111", f"storage {render(key)} is truncated", location=location,
                     offset=cursor.offset())
            return
    if not cursor.at_eof():
        scan.add("SH113", "bytes follow the last storage", location=location,
                 offset=cursor.offset())


def _legacy_storages(main: StreamResult) -> dict[str, int]:
    """Storage key -> element size, from the main object's storage references."""
    sizes: dict[str, int] = {}
    for ref in main.persistent:
        pid = ref.pid
        if not (isinstance(pid, tuple) and len(pid) >= 3 and isinstance(pid[1], Global)):
            continue
        type_name = pid[1].effective.rsplit(".", 1)[-1]
        if not type_name.endswith("Storage"):
            continue
        size = STORAGE_ELEMENT_SIZE.get(type_name[: -len("Storage")])
        if size is not None and isinstance(pid[2], (str, int)):
            sizes[str(pid[2])] = size
    return sizes


def _probe_inline_arrays(scan: FileScan, stream: StreamResult, location: str,
                         reopen: Reopen | None) -> None:
    """joblib skips its raw array bytes; plain ``pickle.load`` would run them as opcodes.

    Each array region is analyzed the way ``pickle.load`` would read it: as opcodes
    continuing from the unpickler's state at the wrapper's BUILD, and on past the region
    to the end of the file. Ordinary numbers fail to parse within a few bytes; a region
    that imports or calls anything is a polyglot. Without a way to re-read the source
    (compressed files), the kept head of the region is probed instead.

    The first array is where the plain reading of the stream leaves joblib's: when that
    reading stops (a STOP in the array bytes), torch's legacy reader loads the next
    pickles from there (protocol, system info, the object, storage keys), streams the
    joblib reading skipped as array data. Those are read and judged too.
    """
    for index, array in enumerate(stream.inline_arrays):
        if not array.head:
            continue
        start = array.offset
        src = reopen(start, _TO_THE_END) if reopen is not None else BytesSource(array.head)
        cursor = PickleCursor(src, base=start, limits=scan.options.limits)
        probe = cursor.stream(array.state)
        _judge_plain_probe(scan, probe, location)
        if index or reopen is None:
            continue
        for _ in range(_LEGACY_READS - 1):
            if not probe.stopped or probe.limit or cursor.at_eof():
                break
            probe = cursor.stream()
            _judge_plain_probe(scan, probe, location)


def _judge_plain_probe(scan: FileScan, probe: StreamResult, location: str) -> None:
    if probe.limit:
        # Fail closed: the reading was not followed to its end, and what lies past the
        # limit (the next legacy record, say) would be loaded unseen.
        scan.add("SH191", f"reading joblib array bytes as plain pickle.load does stopped: "
                 f"{probe.limit}", location=location, offset=probe.start,
                 subject="joblib-array")
    if probe.globals or probe.computed or probe.calls or probe.extensions:
        scan.add("SH114", "joblib array bytes also parse as a pickle that plain "
                 "pickle.load (or torch.load's legacy reader) would run", location=location,
                 offset=probe.start, subject="joblib-array")
        judge_stream(scan, probe, location, Loader.PICKLE)
