"""From a path to a report: open once, sniff the content, run the format's analyzer.

Formats are recognized by content, never by name. A file is read through the one
descriptor opened here, so what is reported on is what was opened. Files that
other readers would see as a second format (a zip archive hiding behind a
pickle, say) are analyzed in both readings.

Folder walks fail closed. A file is left out of the verdict only when its content
is positively identified as not a model (:mod:`safehub._scanner.nonmodel`) and its
name does not announce one; anything else unrecognized is reported "not scanned".
Non-regular files (FIFOs, sockets, devices) are never opened: they are skipped with
a reason inside folders and reported not scanned when named directly. Symbolic links
to files are followed, because a loader opening the link reads the target: the target's
content is scanned under the link's name. Links to directories are followed when their
target is inside the scanned folder (each folder entered once, by device and inode, so
loops end) and reported not scanned when it is outside. A folder that cannot be listed
is reported not scanned.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import BinaryIO

from safehub._scanner.context import FileScan, ScanOptions
from safehub._scanner.fmt_compressed import compression_of, scan_compressed
from safehub._scanner.fmt_numpy import NPY_MAGIC, scan_npy
from safehub._scanner.fmt_pickle import scan_pickle_file
from safehub._scanner.fmt_safetensors import looks_like_safetensors, scan_safetensors
from safehub._scanner.fmt_tar import TarProbe, probe_tar, scan_tar
from safehub._scanner.fmt_zip import scan_zip
from safehub._scanner.judge import Loader, judge_stream
from safehub._scanner.nonmodel import (
    MODEL_NAMES,
    dead_magic_kind,
    identify_non_model,
    is_model_name,
)
from safehub._scanner.pickle_vm import FRAMES_BYTES, PickleCursor
from safehub._scanner.source import ByteSource, FileRegion
from safehub._scanner.textpickle import any_import_can_run, dead_text_names
from safehub._scanner.zipdir import NoDirectory, ZipError, find_eocd, read_directory
from safehub.findings import FileReport, Finding, ScanReport, Skipped, Verdict
from safehub.rules import RULES

__all__ = ["MODEL_SUFFIXES", "scan_fileobj", "scan_paths"]

# Names that announce a model file (kept under its old name for the audit).
MODEL_SUFFIXES = MODEL_NAMES

Progress = Callable[[str], None]

# Opening a FIFO for reading blocks until a writer appears; O_NONBLOCK makes the open return
# at once (there is no such flag, and no FIFO, on Windows).
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
# torch's file-format test (torch/csrc/jit/mobile/file_format.h): bytes 4-8 of a flatbuffer
# TorchScript module. It comes before the zip test, so it decides for any file.
FLATBUFFER_ID = b"PTMF"
# Pickles torch's legacy raw reader loads one after another before any raw storage bytes.
_LEGACY_STREAMS = 5
# Pickles read one after another (torch's legacy records, readers that read on) when a
# frame split makes a reader with ``peek`` start them elsewhere.
_PEEK_STREAMS = 16


def scan_fileobj(fh: BinaryIO, display: str, size: int, options: ScanOptions) -> FileReport:
    """Scan an open binary file (seekable) and report under the name ``display``."""
    scan = FileScan(display, size, options)
    if size > options.max_file_size:
        scan.add("SH191", f"file of {size} bytes exceeds the {options.max_file_size}-byte limit")
        return _report(scan)
    fh.seek(0)
    head = fh.read(512)
    flatbuffer = head[4:8] == FLATBUFFER_ID
    kind = dead_magic_kind(head)
    if kind is not None and not flatbuffer and _dead_non_model(fh, size):
        # An image named directly: every loader stops inside its signature (the oracle
        # shows none resolves a name), and no tar or zip reader finds anything in it.
        scan.format = "non-model"
        scan.add("SH176", f"not a model: {kind}; every model loader stops in its first "
                 "bytes", offset=0, subject=kind)
        return _report(scan, fh)
    if flatbuffer:
        allowed = scan.options.allowed_by if scan.options.allow_torchscript else ""
        scan.add("SH120", "TorchScript flatbuffer module: torch.jit.load and the lite "
                 "interpreter read any file with 'PTMF' at byte 4 as one and run its "
                 "bytecode, whatever else the file is", offset=4, subject="torchscript",
                 allowed_by=allowed)
    # torch.load's order: a zip (by its first four bytes), else whatever tarfile.open
    # accepts, else a raw pickle. The tar decision is tarfile's own.
    tar = None if head.startswith(b"PK\x03\x04") else probe_tar(fh)
    container = True  # a format whose loaders do not read the file as a pickle
    compressed = False  # joblib's reading, decompressed, is the primary one
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        _scan_zip_file(scan, fh, primary=True)
        if tar is not None and tar.accepted:
            _scan_tar_polyglot(scan, tar, "a zip archive")
    elif tar is not None and tar.accepted:
        scan_tar(scan, tar)
        other = _other_format(head, size)
        if other:
            scan.add("SH114", f"the file is a tar archive torch.load reads and also {other}",
                     offset=0, subject="tar-polyglot")
    elif head.startswith(NPY_MAGIC):
        scan.format = "npy"
        scan_npy(scan, FileRegion(fh, 0, size), "", 0)
    elif looks_like_safetensors(head, size):
        scan.format = "safetensors"
        scan_safetensors(scan, fh)
    elif (kind := compression_of(head)) is not None:
        compressed = True
        scan_compressed(scan, fh, kind)
    else:
        container = False
        _scan_pickle_or_unknown(scan, fh, size, flatbuffer)
    if container and not head.startswith(b"PK\x03\x04"):
        _scan_as_pickle(scan, fh, size)
    if not compressed and (tar is None or not tar.accepted):
        _scan_compressed_polyglot(scan, fh, head)
    if not head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        _scan_hidden_zip(scan, fh)
        if any(f.rule_id == "SH160" for f in scan.findings):
            _scan_peek_reading(scan, fh, size)
    return _report(scan, fh)


def _scan_peek_reading(scan: FileScan, fh: BinaryIO, size: int) -> None:
    """The pickles after a STOP inside a frame, as a reader with ``peek`` reads them.

    ``torch.load(path)`` and ``pickle.load(open(path, "rb"))`` read through a buffered
    file, which has ``peek``: _pickle.c then consumes only what it parsed, so after a
    STOP inside a frame the next ``load()`` (torch's next legacy record) starts right
    after the STOP. Read from an ``io.BytesIO`` (no ``peek``), the next one starts at the
    frame's end: that is the reading already analyzed. Only files with a split frame
    (SH160) can differ; the streams this reading starts elsewhere are judged here.
    """
    starts = set()
    cursor = PickleCursor(FileRegion(fh, 0, size), limits=scan.options.limits,
                          python_reading=True)
    for _ in range(_PEEK_STREAMS):
        if cursor.at_eof():
            break
        res = cursor.stream()
        starts.add(res.start)
        if not res.stopped or res.limit:
            break
    cursor = PickleCursor(FileRegion(fh, 0, size), limits=scan.options.limits,
                          frames=FRAMES_BYTES, python_reading=True)
    for _ in range(_PEEK_STREAMS):
        if cursor.at_eof():
            break
        res = cursor.stream()
        if res.start not in starts:
            judge_stream(scan, res, "", Loader.TORCH_LEGACY)
            if res.limit:
                scan.add("SH191", f"reading the file as a pickle stopped: {res.limit}",
                         offset=res.start, subject="pickle-polyglot")
        if not res.stopped or res.limit:
            break


def _scan_compressed_polyglot(scan: FileScan, fh: BinaryIO, head: bytes) -> None:
    """joblib.load picks its decompressor by the first bytes alone, whatever format they
    also begin: a safetensors header length can spell gzip's magic, and its JSON header
    can hold the deflate data of a pickle. The decompressed reading is judged whenever it
    is a pickle; when it does not decompress or is no pickle, joblib.load stops before
    any opcode runs. (A tar archive that spells compressor magic is reported as a
    polyglot by the tar path.)"""
    kind = compression_of(head)
    if kind is None:
        return
    probe = FileScan(scan.path, scan.size, scan.options)
    probe.options = scan.options  # the file's one opcode budget
    scan_compressed(probe, fh, kind)
    if probe.format == "unknown":
        return
    scan.add("SH114", f"the file is also {kind}-compressed data that joblib.load "
             "decompresses and unpickles", offset=0, subject="compressed-polyglot")
    scan.findings.extend(probe.findings)
    scan.records.extend(probe.records)


def _other_format(head: bytes, size: int) -> str:
    """Another reader's format that a tar archive's first header also spells, or ""."""
    if head.startswith(NPY_MAGIC):
        return "a numpy array file"
    if looks_like_safetensors(head, size):
        return "a safetensors file"
    kind = compression_of(head)
    return f"{kind} compressed data" if kind is not None else ""


def _scan_tar_polyglot(scan: FileScan, tar: TarProbe, other: str) -> None:
    scan.add("SH114", f"the file is {other} and also a tar archive torch.load reads",
             offset=0, subject="tar-polyglot")
    scan_tar(scan, tar)


def _scan_pickle_or_unknown(scan: FileScan, fh: BinaryIO, size: int, flatbuffer: bool) -> None:
    def reopen(start: int, length: int) -> ByteSource:
        return FileRegion(fh, start, length)

    names = dead_text_names(fh, size, scan.options.limits)
    if names is not None and flatbuffer:
        scan.format = "torchscript"  # a flatbuffer module (SH120) that no pickle reader starts
        return
    if names is not None:
        # Source code, YAML, prose whose first bytes are opcodes: no loader gets anywhere.
        scan.format = "unknown"
        shown = ", ".join(map(repr, names[:10])) + (
            f" and {len(names) - 10} more" if len(names) > 10 else "")
        looked_up = (f"; {shown}, which a reader would ask __import__ for, can name no "
                     "installed module" if names else "")
        scan.add("SH190", "content is text, not a model format: read as a pickle, every "
                 f"loader stops before it completes a record or imports a module{looked_up}")
        return
    _, is_pickle = scan_pickle_file(scan, FileRegion(fh, 0, size), reopen=reopen)
    if not is_pickle and flatbuffer:
        scan.format = "torchscript"
    elif not is_pickle:
        scan.format = "unknown"
        scan.add("SH190", "content is not a recognized model format (pickle, torch, numpy, "
                 "joblib, safetensors)")


def _scan_as_pickle(scan: FileScan, fh: BinaryIO, size: int) -> None:
    """Polyglots: pickle.load, joblib.load and torch.load read anything that is not their own
    container (a zip for torch, compressor magic for joblib) as a pickle from byte 0.

    A tar header's name field, a safetensors header length or a bzip2 header can hold
    opcodes. Real headers fail within a few opcodes without importing anything. torch.load
    also falls back to this reading when tarfile accepted the file but extracting a member
    fails, and then reads up to five consecutive pickles (magic number, protocol, system
    info, object, storage keys): every one of them is probed.
    """
    # joblib.load and dill read it with pickle._Unpickler: streams where its parsing
    # differs from _pickle.c's are read its way too (python_reading).
    cursor = PickleCursor(FileRegion(fh, 0, size), limits=scan.options.limits,
                          python_reading=True)
    streams = [cursor.stream()]
    while (streams[-1].stopped and not streams[-1].limit and len(streams) < _LEGACY_STREAMS
           and not cursor.at_eof()):
        streams.append(cursor.stream())
    for probe in streams:
        if probe.limit:  # fail closed: the probe could not follow the parser to its end
            scan.add("SH191", f"reading the file as a pickle stopped: {probe.limit}",
                     offset=probe.start, subject="pickle-polyglot")
    if not any(probe.computed or probe.extensions
               or any_import_can_run(g.raw for g in probe.globals) for probe in streams):
        return
    scan.add("SH114", "the file also parses as a pickle that pickle.load, joblib.load or "
             "torch.load would run", offset=0, subject="pickle-polyglot")
    for probe in streams:
        judge_stream(scan, probe, "", Loader.PICKLE)
    if scan.format == "unknown":
        scan.format = "pickle"


def _scan_zip_file(scan: FileScan, fh: BinaryIO, *, primary: bool) -> None:
    eocd = find_eocd(fh, scan.size)
    if eocd is None:
        if primary:
            scan.format = "zip"
            scan.add("SH111", "zip archive without its end-of-directory record")
        return
    try:
        directory = read_directory(fh, scan.size, eocd)
    except NoDirectory as exc:
        # Bytes that merely contain the end-record signature: no reader finds a directory.
        if primary:
            scan.format = "zip"
            scan.add("SH110", f"zip directory cannot be read: {exc}", offset=eocd)
        return
    except ZipError as exc:
        # A central directory is where the end record says, but it cannot be read: a
        # loader may read it otherwise (fail closed, never "no zip").
        if primary:
            scan.format = "zip"
        else:
            scan.add("SH114", "a zip archive is hidden in this file; zip readers (torch, "
                     "numpy, zipfile) may load it", offset=eocd, subject="hidden-zip")
        scan.add("SH110", f"zip directory cannot be read: {exc}", offset=eocd)
        return
    for problem in directory.unread:
        # Another reader's directory, which this scanner cannot parse (a zip64 entry count
        # zipfile ignores, say), while the one it can parse is a decoy: fail closed.
        if not primary:
            scan.add("SH114", "a zip archive is hidden in this file; zip readers (torch, "
                     "numpy, zipfile) may load it", offset=eocd, subject="hidden-zip")
        scan.add("SH110", f"a zip reader's central directory cannot be read: {problem}",
                 offset=eocd)
    for reading in (directory, *directory.others):
        if not primary:
            if not reading.entries:
                continue
            scan.add("SH114", "a zip archive is hidden in this file; zip readers (torch, "
                     "numpy, zipfile) would load it", offset=max(0, reading.prefix),
                     subject="hidden-zip")
        fmt = scan_zip(scan, fh, reading)
        if scan.format in ("unknown", "zip") or (primary and reading is directory):
            scan.format = fmt


def _scan_hidden_zip(scan: FileScan, fh: BinaryIO) -> None:
    """Polyglots: numpy and zipfile find an archive by its end record, wherever it starts."""
    # Data that merely contains the end-record bytes is not a polyglot: only a directory
    # that parses counts (checked in _scan_zip_file).
    if scan.size >= 22:
        _scan_zip_file(scan, fh, primary=False)


def _report(scan: FileScan, fh: BinaryIO | None = None) -> FileReport:
    report = FileReport(path=scan.path, format=scan.format, size=scan.size,
                        findings=tuple(scan.findings), records=tuple(scan.records))
    if fh is None or not scan.options.decompile or report.verdict is not Verdict.UNSAFE:
        return report
    from safehub._scanner.explain import decompile, record_bytes

    sources = []
    for location in dict.fromkeys(f.location for f in report.findings if f.blocking):
        data = record_bytes(fh, scan.size, location)
        if data is not None:
            sources.append((location or "pickle", decompile(data)))
    return replace(report, decompiled=tuple(sources))


def _unreadable(display: str, size: int, error: str) -> FileReport:
    finding = Finding(rule_id="SH193", severity=RULES["SH193"].severity,
                      message=f"not scanned: {error}", path=display)
    return FileReport(path=display, format="unreadable", size=size, error=error,
                      findings=(finding,))


def _not_regular(st: os.stat_result) -> str:
    """Why a file of this mode is not opened, or "" for a regular file."""
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return ""
    for test, what in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISDIR, "a directory")):
        if test(mode):
            return f"not a regular file ({what}); not opened"
    return "not a regular file; not opened"


def _scan_path(path: str, display: str, options: ScanOptions,
               *, walked: bool = False) -> FileReport | Skipped:
    """Scan one file. A non-regular file is never opened (a FIFO would block the scan):
    the mode is checked before opening, and the open itself cannot block."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return _unreadable(display, 0, f"cannot open: {exc.strerror}")
    why = _not_regular(st)
    if why:
        return Skipped(display, why) if walked else _unreadable(display, 0, why)
    try:
        # O_NONBLOCK: if the path was swapped for a FIFO since the stat, open returns at once.
        fd = os.open(path, os.O_RDONLY | _NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        return _unreadable(display, 0, f"cannot open: {exc.strerror}")
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        why = _not_regular(st)
        if why:
            return Skipped(display, why) if walked else _unreadable(display, 0, why)
        try:
            if _NONBLOCK:
                os.set_blocking(fd, True)
            if walked and not is_model_name(display) and _dead_non_model(fh, st.st_size):
                return Skipped(display, "not a model format")
            report = scan_fileobj(fh, display, st.st_size, options)
            if walked and report.verdict is Verdict.UNKNOWN and not report.error:
                kind = None if is_model_name(display) else identify_non_model(fh, st.st_size)
                # Never skip what tarfile opens: torch.load takes its legacy tar path.
                if kind is not None and not probe_tar(fh).accepted:
                    return Skipped(display, "not a model format")
            return report
        except OSError as exc:
            return _unreadable(display, st.st_size, f"read failed: {exc.strerror or exc}")


def _dead_non_model(fh: BinaryIO, size: int) -> bool:
    """An image or document signature that ends every pickle loader in its first bytes,
    with no tar archive (torch.load asks tarfile before any pickle reader) and no zip
    directory hidden behind it."""
    fh.seek(0)
    if dead_magic_kind(fh.read(16)) is None:
        return False
    # A tar header's first field is a member name an attacker chooses: it can spell any
    # signature. Whatever tarfile opens, torch.load reads as a legacy checkpoint.
    probe = probe_tar(fh)
    if probe.accepted:
        return False
    eocd = find_eocd(fh, size) if size >= 22 else None
    if eocd is None:
        return True
    try:
        directory = read_directory(fh, size, eocd)
    except NoDirectory:
        return True
    except ZipError:
        return False  # a directory no reader may be denied: scanned, never skipped
    if directory.unread:
        return False  # a directory a reader may read and this scanner cannot: scanned
    return not any(d.entries for d in (directory, *directory.others))


# What the walk says about an entry: scan it, leave it out (with a reason), or report it
# not scanned (with a reason).
_SCAN, _SKIP, _UNSCANNED = "scan", "skip", "unscanned"


def _walk(root: str) -> Iterator[tuple[str, str, str]]:
    """(path, action, reason) for every entry below ``root``, in a stable order.

    Links to folders are followed as loaders follow them (a sharded checkpoint's index
    names files through them) when their target lies inside the scanned folder; each
    folder is entered once, by its (st_dev, st_ino), so link loops end. A link that leads
    outside it is reported not scanned, and so is a folder that cannot be listed.
    """
    real_root = os.path.realpath(root)
    seen: set[tuple[int, int]] = set()
    try:
        st = os.stat(root)
        seen.add((st.st_dev, st.st_ino))
    except OSError:
        pass
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError:
            yield folder, _UNSCANNED, "folder cannot be listed"
            continue
        subfolders: list[str] = []
        for entry in entries:
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if not is_dir:
                yield entry.path, _SCAN, ""
                continue
            if entry.is_symlink() and not _inside(os.path.realpath(entry.path), real_root):
                yield (entry.path, _UNSCANNED,
                       "symbolic link to a folder outside the scanned folder (not followed)")
                continue
            try:
                st = os.stat(entry.path)
            except OSError:
                yield entry.path, _UNSCANNED, "folder cannot be listed"
                continue
            if (st.st_dev, st.st_ino) in seen:
                yield entry.path, _SKIP, "folder already scanned under another path (link)"
                continue
            seen.add((st.st_dev, st.st_ino))
            subfolders.append(entry.path)
        stack.extend(reversed(subfolders))


def _inside(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # different drives
        return False


def scan_paths(
    paths: list[str], options: ScanOptions, progress: Progress | None = None
) -> ScanReport:
    """Scan files and folders (recursively).

    Inside folders a file is skipped only when its content is positively identified as
    not a model (and its name does not announce one), or when it is not a regular file
    (never opened). Everything else is in the report, unrecognized content as not scanned.
    """
    files: list[FileReport] = []
    skipped: list[Skipped] = []
    for root in paths:
        if not os.path.isdir(root):
            if progress:
                progress(root)
            files.append(_as_report(_scan_path(root, root, options)))
            continue
        for full, action, reason in _walk(root):
            if action == _UNSCANNED:
                files.append(_unreadable(full, 0, reason))
                continue
            if action == _SKIP:
                skipped.append(Skipped(full, reason))
                continue
            if progress:
                progress(full)
            result = _scan_path(full, full, options, walked=True)
            if isinstance(result, Skipped):
                skipped.append(result)
            else:
                files.append(result)
    return ScanReport(files=tuple(files), skipped=tuple(skipped), roots=tuple(paths))


def _as_report(result: FileReport | Skipped) -> FileReport:
    return result if isinstance(result, FileReport) else _unreadable(result.path, 0, result.reason)
