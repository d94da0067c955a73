"""From a path to a report: open once, sniff the content, run the format's analyzer.

Formats are recognized by content, never by name. A file is read through the one
descriptor opened here, so what is reported on is what was opened. Files that
other readers would see as a second format (a zip archive hiding behind a
pickle, say) are analyzed in both readings.
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
from safehub._scanner.fmt_tar import looks_like_tar, scan_tar
from safehub._scanner.fmt_zip import scan_zip
from safehub._scanner.judge import Loader, judge_stream
from safehub._scanner.pickle_vm import PickleCursor
from safehub._scanner.source import ByteSource, FileRegion
from safehub._scanner.zipdir import ZipError, find_eocd, read_directory
from safehub.findings import FileReport, Finding, ScanReport, Skipped, Verdict
from safehub.rules import RULES

__all__ = ["MODEL_SUFFIXES", "scan_fileobj", "scan_paths"]

# Names that announce a model file: in a folder walk, such a file whose content is not
# recognized is reported as unscanned instead of being skipped silently.
MODEL_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib", ".npy", ".npz",
                  ".safetensors", ".pt2", ".pb", ".h5", ".hdf5", ".keras", ".onnx", ".gguf",
                  ".ggml", ".msgpack", ".mar", ".nemo", ".tar")

Progress = Callable[[str], None]


def scan_fileobj(fh: BinaryIO, display: str, size: int, options: ScanOptions) -> FileReport:
    """Scan an open binary file (seekable) and report under the name ``display``."""
    scan = FileScan(display, size, options)
    if size > options.max_file_size:
        scan.add("SH191", f"file of {size} bytes exceeds the {options.max_file_size}-byte limit")
        return _report(scan)
    fh.seek(0)
    head = fh.read(512)
    container = True  # a format whose loaders do not read the file as a pickle
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        _scan_zip_file(scan, fh, primary=True)
    elif head.startswith(NPY_MAGIC):
        scan.format = "npy"
        scan_npy(scan, FileRegion(fh, 0, size), "", 0)
    elif looks_like_safetensors(head, size):
        scan.format = "safetensors"
        scan_safetensors(scan, fh)
    elif looks_like_tar(head):
        scan_tar(scan, fh)
    elif (kind := compression_of(head)) is not None:
        scan_compressed(scan, fh, kind)
    else:
        container = False
        _scan_pickle_or_unknown(scan, fh, size)
    if container and not head.startswith(b"PK\x03\x04"):
        _scan_as_pickle(scan, fh, size)
    if not head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        _scan_hidden_zip(scan, fh)
    return _report(scan, fh)


def _scan_pickle_or_unknown(scan: FileScan, fh: BinaryIO, size: int) -> None:
    def reopen(start: int, length: int) -> ByteSource:
        return FileRegion(fh, start, length)

    _, is_pickle = scan_pickle_file(scan, FileRegion(fh, 0, size), reopen=reopen)
    if not is_pickle:
        scan.format = "unknown"
        scan.add("SH190", "content is not a recognized model format (pickle, torch, numpy, "
                 "joblib, safetensors)")


def _scan_as_pickle(scan: FileScan, fh: BinaryIO, size: int) -> None:
    """Polyglots: pickle.load, joblib.load and torch.load read anything that is not their own
    container (a zip for torch, compressor magic for joblib) as a pickle from byte 0.

    A tar header's name field, a safetensors header length or a bzip2 header can hold
    opcodes. Real headers fail within a few opcodes without importing anything.
    """
    probe = PickleCursor(FileRegion(fh, 0, size), limits=scan.options.limits).stream()
    if probe.limit:  # fail closed: the probe could not follow the parser to its end
        scan.add("SH191", f"reading the file as a pickle stopped: {probe.limit}", offset=0,
                 subject="pickle-polyglot")
    if not (probe.computed or probe.extensions or any(
            _importable(g.raw) for g in probe.globals)):
        return
    scan.add("SH114", "the file also parses as a pickle that pickle.load, joblib.load or "
             "torch.load would run", offset=0, subject="pickle-polyglot")
    judge_stream(scan, probe, "", Loader.PICKLE)
    if scan.format == "unknown":
        scan.format = "pickle"


def _importable(name: str) -> bool:
    """Whether an import could succeed: every dotted part a Python identifier."""
    return all(part.isidentifier() for part in name.split("."))


def _scan_zip_file(scan: FileScan, fh: BinaryIO, *, primary: bool) -> None:
    eocd = find_eocd(fh, scan.size)
    if eocd is None:
        if primary:
            scan.format = "zip"
            scan.add("SH111", "zip archive without its end-of-directory record")
        return
    try:
        directory = read_directory(fh, scan.size, eocd)
    except ZipError as exc:
        if primary:
            scan.format = "zip"
            scan.add("SH110", f"zip directory cannot be read: {exc}", offset=eocd)
        return
    if not primary:
        if not directory.entries:
            return
        scan.add("SH114", "a zip archive is hidden in this file; zip readers (numpy, zipfile) "
                 "would load it", offset=directory.prefix, subject="hidden-zip")
        hidden_format = scan_zip(scan, fh, directory)
        if scan.format == "unknown":
            scan.format = hidden_format
        return
    scan.format = scan_zip(scan, fh, directory)


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


def _scan_path(path: str, display: str, options: ScanOptions) -> FileReport:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        return _unreadable(display, 0, f"cannot open: {exc.strerror}")
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            return _unreadable(display, 0, "not a regular file")
        try:
            return scan_fileobj(fh, display, st.st_size, options)
        except OSError as exc:
            return _unreadable(display, st.st_size, f"read failed: {exc.strerror or exc}")


def _walk(root: str) -> Iterator[tuple[str, str | None]]:
    """(path, reason to skip or None) for every entry below ``root``, in a stable order."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        kept = []
        for d in dirnames:
            if os.path.islink(os.path.join(dirpath, d)):
                yield os.path.join(dirpath, d), "symbolic link (not followed)"
            else:
                kept.append(d)
        dirnames[:] = kept
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                yield full, "symbolic link (not followed)"
            else:
                yield full, None


def scan_paths(
    paths: list[str], options: ScanOptions, progress: Progress | None = None
) -> ScanReport:
    """Scan files and folders (recursively). Unrecognized files inside folders are skipped
    with a reason unless their name says they are model files."""
    files: list[FileReport] = []
    skipped: list[Skipped] = []
    for root in paths:
        if not os.path.isdir(root):
            if progress:
                progress(root)
            files.append(_scan_path(root, root, options))
            continue
        for full, reason in _walk(root):
            if reason is not None:
                skipped.append(Skipped(full, reason))
                continue
            if progress:
                progress(full)
            report = _scan_path(full, full, options)
            if report.verdict is Verdict.UNKNOWN and not full.lower().endswith(MODEL_SUFFIXES):
                skipped.append(Skipped(full, "not a model format"))
            else:
                files.append(report)
    return ScanReport(files=tuple(files), skipped=tuple(skipped), roots=tuple(paths))
