"""Zip archives: torch checkpoints, TorchScript, torch.package, numpy ``.npz``.

Every record a loader could unpickle is analyzed: all ``*.pkl`` records
(miniz matches names case-insensitively and any archive prefix works), every
``.npy`` member, and any other record that begins like a pickle. Tensor data
records are never read, so the cost does not depend on model size.
"""

from __future__ import annotations

from typing import BinaryIO

from safehub._scanner.context import FileScan
from safehub._scanner.fmt_numpy import NPY_MAGIC, scan_npy
from safehub._scanner.judge import Loader, judge_stream
from safehub._scanner.pickle_vm import OpBudget, PickleCursor
from safehub._scanner.source import StreamSource
from safehub._scanner.zipdir import ZipDirectory, ZipEntry, open_entry

__all__ = ["RecordNames", "ZipStorages", "scan_zip"]

_METADATA = {"version", ".format_version", ".storage_alignment", "byteorder",
             ".data/serialization_id", ".data/version", ".data/python_version"}


def scan_zip(scan: FileScan, fh: BinaryIO, directory: ZipDirectory) -> str:
    """Check every record of the archive; returns its format (``unknown`` without records)."""
    entries = directory.entries
    names = [e.lower for e in entries]
    torchscript = any(_torchscript_record(n) for n in names)
    package = any(n.endswith(".data/extern_modules") for n in names)
    seen: set[str] = set()
    for message, offset in directory.anomalies:
        if message not in seen:
            seen.add(message)
            scan.add("SH115", message, offset=offset, subject="zip")
    fmt: str | None = None
    if package:
        fmt = "torch-package"
        modules = [e.name for e in entries if e.lower.endswith(".py")]
        scan.add("SH121", f"torch.package archive with {len(modules)} Python modules",
                 subject="torch.package", payload=", ".join(modules[:10]))
    elif torchscript:
        fmt = "torchscript"
        code = [e.name for e in entries if _torchscript_record(e.lower) and not e.lower.endswith(
            (".debug_pkl", "/constants.pkl"))]
        allowed = scan.options.allowed_by if scan.options.allow_torchscript else ""
        scan.add("SH120", f"TorchScript archive with {len(code)} code files", subject="torchscript",
                 payload=", ".join(code[:10]), allowed_by=allowed)
    loader = Loader.TORCHSCRIPT if torchscript else Loader.TORCH_ZIP
    by_name = RecordNames(directory)
    analyzed = 0
    for entry in entries:
        if entry.size and entry.miniz_directory:
            # miniz reads nothing for it and reports success: torch gets a buffer of the
            # declared size, uninitialized (it can hold a record torch read and freed just
            # before), and unpickles that. What torch reads cannot be known; zipfile
            # (numpy) reads the bytes, analyzed below.
            scan.add("SH110", f"{entry.name}: miniz (torch) takes this {entry.size}-byte "
                     "record for a directory (DOS attribute or trailing '/') and reads none "
                     "of its bytes; torch.load would use uninitialized memory in their place",
                     location=entry.name, offset=max(0, entry.header_offset))
        if entry.data_offset < 0:
            continue  # no local header (an SH115 anomaly): zipfile and miniz refuse it
        if entry.method not in (0, 8) and entry.compressed_size:
            # Its content cannot be checked; zipfile (numpy) reads bzip2 and lzma members,
            # so an object array could hide in one.
            scan.add("SH116", f"{entry.name}: compression method {entry.method}",
                     location=entry.name, subject=f"method-{entry.method}")
            analyzed += 1
            continue
        budget = scan.options.limits.budget
        kind = _record_kind(fh, entry, budget)
        if _inflation_spent(scan, entry, "before"):
            break
        if kind is None:
            continue
        if budget is not None and budget.left <= 0:
            scan.add("SH191", f"analysis budget of {scan.options.limits.max_ops} opcodes spent "
                     f"before record {entry.name}; the rest of the archive was not analyzed",
                     location=entry.name)
            break
        analyzed += 1
        src, inflater = open_entry(fh, entry, scan.options.max_record_size, budget)
        scan.records.append(entry.name)
        if kind == "npy":
            scan_npy(scan, src, entry.name, 0,
                     declared=entry.size if entry.method == 8 else None)
        else:
            cursor = PickleCursor(src, limits=scan.options.limits, torch_names=True)
            result = cursor.stream()
            # torch.load never reads other pickles in a checkpoint, so they are judged as
            # plain pickles; torch.jit.load reads its .debug_pkl records itself.
            hidden = kind == "hidden-pickle" and not torchscript
            judge_stream(scan, result, entry.name, Loader.PICKLE if hidden else loader,
                         ZipStorages(fh, by_name, entry))
            if result.stopped and not cursor.at_eof():
                scan.add("SH113", "bytes follow the pickle inside the record",
                         location=entry.name, offset=cursor.offset())
        if inflater is not None and inflater.error:
            scan.add("SH110", f"{entry.name}: {inflater.error}", location=entry.name)
        elif (isinstance(src, StreamSource) and src.exhausted_limit
              and entry.size > scan.options.max_record_size):
            # torch and zipfile read the whole record: what lies past the limit would be
            # unpickled unseen (the cut stream would otherwise read as merely truncated).
            scan.add("SH191", f"{entry.name}: record of {entry.size} bytes exceeds the "
                     f"{scan.options.max_record_size}-byte record limit; the rest was not "
                     "analyzed", location=entry.name)
        if _inflation_spent(scan, entry, "inside"):
            break
    if fmt is None:
        if analyzed == 0:
            scan.add("SH190", "zip archive without pickle or numpy records")
            return "unknown"
        fmt = "torch-zip" if any(n.endswith(".pkl") for n in names) else "npz"
    if directory.prefix > 0:
        scan.add("SH114", f"{directory.prefix} bytes precede the zip archive", offset=0,
                 subject="data-before-zip")
    if directory.end < scan.size:
        scan.add("SH113", "bytes follow the end of the zip archive", offset=directory.end)
    return fmt


def _inflation_spent(scan: FileScan, entry: ZipEntry, where: str) -> bool:
    """Whether the file's decompression budget ran out (then reported: the records from
    ``entry`` on were not, or not wholly, read)."""
    budget = scan.options.limits.budget
    if budget is None or budget.inflate_left > 0:
        return False
    scan.add("SH191", f"decompression budget of {scan.options.limits.max_inflate} bytes spent "
             f"{where} record {entry.name}; the rest of the archive was not analyzed",
             location=entry.name)
    return True


def _ascii_lower(name: str) -> str:
    """miniz compares names case-insensitively in ASCII only (its MZ_TOLOWER)."""
    return name.translate(_ASCII_LOWER)


_ASCII_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


class RecordNames:
    """The archive's records by name as miniz matches them, indexed once per directory
    and only when a sparse or nested rebuild asks (most archives never do)."""

    def __init__(self, directory: ZipDirectory):
        self.directory = directory
        self._names: dict[str, list[ZipEntry]] | None = None

    def index(self) -> dict[str, list[ZipEntry]]:
        if self._names is None:
            self._names = {}
            for e in self.directory.entries:
                self._names.setdefault(_ascii_lower(e.name), []).append(e)
        return self._names


class ZipStorages:
    """The storage records torch.load reads for an archive's pickle, as torch finds them.

    torch takes the archive's folder from the central directory's first name (up to its
    first '/'), reads ``<folder>/data.pkl`` and, for storage key K, ``<folder>/data/K``,
    looked up case-insensitively (miniz). Storages are read from the stored bytes; a
    record torch could read otherwise (compressed: ``mmap=True`` maps the raw bytes, a
    name several records answer to, a record miniz takes for a folder, a size other than
    the pickle's) is not read but reported as a reason the data is unknown.
    """

    def __init__(self, fh: BinaryIO, names: RecordNames, pickle: ZipEntry):
        self._fh = fh
        self._names = names
        self._pickle = pickle
        self._ready = False
        self._prefix = ""
        self._problem = ""
        self._byteorder: str | None = None

    def _index(self) -> dict[str, list[ZipEntry]]:
        names = self._names.index()
        if self._ready:
            return names
        self._ready = True
        entries = self._names.directory.entries
        folder, slash, _ = (entries[0].name if entries else "").partition("/")
        self._prefix = folder + "/"
        if not slash or "\0" in folder:
            self._problem = "the archive's first record is in no folder torch can name"
        elif names.get(_ascii_lower(self._prefix + "data.pkl")) != [self._pickle]:
            self._problem = (f"{self._pickle.name} is not the one data.pkl torch.load reads "
                             f"from folder {folder!r}")
        return names

    def _entry(self, name: str) -> ZipEntry | str | None:
        # torch hands miniz the name as a C string: a storage key with a NUL names the
        # record up to it ('0\x00x' reads data/0, not a record named data/0\x00x)
        name = (self._prefix + name).split("\0", 1)[0]
        found = self._index().get(_ascii_lower(name), [])
        if len(found) > 1:
            return f"several records answer to {name!r} (miniz picks one)"
        return found[0] if found else None

    @property
    def byteorder(self) -> str:
        if self._byteorder is None:
            self._byteorder = self._read_byteorder()
        return self._byteorder

    def _read_byteorder(self) -> str:
        self._index()
        if self._problem:
            return self._problem
        entry = self._entry("byteorder")
        if entry is None:
            return "<"  # torch's default load endianness
        if isinstance(entry, str):
            return entry
        if entry.data_offset < 0 or entry.miniz_directory or entry.method not in (0, 8):
            return "the byteorder record cannot be read as torch reads it"
        src, _ = open_entry(self._fh, entry, 16)
        mark = src.read(16)
        if entry.size != len(mark) or mark not in (b"little", b"big"):
            return "the byteorder record says neither 'little' nor 'big'"
        return "<" if mark == b"little" else ">"

    def read(self, key: str, nbytes: int, start: int, length: int) -> bytes | str:
        """``length`` bytes from ``start`` of storage ``key``, or why they are unknown."""
        self._index()
        if self._problem:
            return self._problem
        entry = self._entry("data/" + key)
        if not isinstance(entry, ZipEntry):
            return entry or f"no storage record data/{key} in the archive"
        if entry.data_offset < 0 or entry.miniz_directory:
            return (f"storage record data/{key} is not read as stored (no local header, or "
                    "a folder to miniz)")
        if entry.method != 0 or entry.compressed_size != entry.size:
            return (f"storage record data/{key} is compressed: torch.load(mmap=True) would "
                    "read its raw bytes")
        if entry.size != nbytes:
            return (f"storage record data/{key} holds {entry.size} bytes, the pickle says "
                    f"{nbytes}")
        self._fh.seek(entry.data_offset + start)
        data = self._fh.read(length)
        if len(data) != length:
            return f"storage record data/{key} is truncated"
        return data


def _torchscript_record(name: str) -> bool:
    """Whether a TorchScript loader reads this record as code: torch.jit.load compiles
    ``code/`` and reads ``constants.pkl`` (torch.load hands it such archives), and the lite
    interpreter (``torch.jit.mobile._load_for_lite_interpreter``) runs the instructions of
    ``bytecode.pkl`` and needs neither: its ``__torch__`` classes' ``__setstate__`` runs
    at load."""
    return "/code/" in name or name.endswith(("/constants.pkl", "/bytecode.pkl"))


def _record_kind(fh: BinaryIO, entry: ZipEntry, budget: OpBudget | None) -> str | None:
    """What a loader could do with this record: 'pickle', 'npy', 'hidden-pickle' or None."""
    # zipfile (numpy.load) cuts a name at its first NUL, and numpy opens members whose
    # names end in "/" like any other: the bytes decide, never the name's shape.
    name = entry.lower.split("\0", 1)[0]
    if name.endswith(".pkl"):
        return "pickle"
    head = _peek(fh, entry, budget)
    if head.startswith(NPY_MAGIC):
        return "npy"
    tail = name.split("/", 1)[-1]
    if tail.startswith("data/") or tail in _METADATA:
        return None  # tensor storage bytes or torch's small metadata records
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "hidden-pickle"
    return None


def _peek(fh: BinaryIO, entry: ZipEntry, budget: OpBudget | None) -> bytes:
    if entry.method == 0:
        fh.seek(entry.data_offset)
        return fh.read(min(8, entry.compressed_size))
    if entry.method == 8:
        src, _ = open_entry(fh, entry, 8, budget)
        return src.read(8)
    return b""
