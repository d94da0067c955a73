"""One file: open it once, hash what an integrity check needs, scan it, from one descriptor.

The descriptor is opened without following links (a blob swapped for a link is
refused, not followed) and without blocking (a FIFO planted in a cache cannot hang the
audit). Digests are computed with positional reads, so hashing and scanning read the
same open file. Only the digests asked for are computed, and only when the file changed
since the state recorded them.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from typing import BinaryIO

from safehub._audit.state import Entry, analyzer_fingerprint, report_from_json, report_to_json
from safehub._audit.state import stat_key as _stat_key
from safehub._scanner.context import ScanOptions
from safehub._scanner.engine import scan_fileobj
from safehub.findings import FileReport, Finding
from safehub.rules import RULES

__all__ = ["ALGORITHMS", "Job", "Outcome", "reuse", "run_job", "scan_fingerprint"]

ALGORITHMS = ("sha256", "git-sha1")
_CHUNK = 1 << 20
_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def scan_fingerprint(options: ScanOptions) -> str:
    """Identifies the analyzer and the options a scan result was made with."""
    return hashlib.sha256(f"{analyzer_fingerprint()}\x1f{options!r}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Job:
    """Check one file: ``need`` names the digests integrity checks want."""

    real: str
    options: ScanOptions
    scanned_with: str
    need: tuple[str, ...] = ()
    cached: Entry | None = None
    rescan: bool = False


@dataclass(frozen=True)
class Outcome:
    """What was found: the entry to remember (None when the file could not be opened),
    the scan (reported under the real path), and what work it took."""

    real: str
    entry: Entry | None
    report: FileReport
    scanned: bool
    hashed_bytes: int


def _unreadable(real: str, error: str, size: int = 0) -> FileReport:
    finding = Finding(rule_id="SH193", severity=RULES["SH193"].severity,
                      message=f"not audited: {error}", path=real)
    return FileReport(path=real, format="unreadable", size=size, error=error,
                      findings=(finding,))


def _digests(fd: int, size: int, algorithms: tuple[str, ...]) -> dict[str, str]:
    hashers = {}
    for algorithm in algorithms:
        if algorithm == "sha256":
            hashers[algorithm] = hashlib.sha256()
        elif algorithm == "git-sha1":
            h = hashlib.sha1(usedforsecurity=False)
            h.update(b"blob %d\x00" % size)  # a Git blob id covers this header
            hashers[algorithm] = h
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    offset = 0
    while True:
        n = os.preadv(fd, [buffer], offset)
        if n <= 0:
            break
        for h in hashers.values():
            h.update(view[:n])
        offset += n
    if offset != size:
        raise OSError(f"the file changed size while it was read ({size} -> {offset} bytes)")
    return {name: h.hexdigest() for name, h in hashers.items()}


def reuse(job: Job) -> Outcome | None:
    """The remembered outcome, when the file's stat key still matches and the state has
    every digest and a scan from this analyzer with these options; else None."""
    cached = job.cached
    if cached is None or job.rescan or cached.scan is None or \
            cached.scanned_with != job.scanned_with:
        return None
    if any(a not in cached.digests for a in job.need):
        return None
    try:
        st = os.stat(job.real, follow_symlinks=False)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or _stat_key(st) != cached.key:
        return None
    try:
        report = report_from_json(cached.scan, job.real)
    except (ValueError, KeyError, TypeError):
        return None
    return Outcome(job.real, cached, report, scanned=False, hashed_bytes=0)


def run_job(job: Job) -> Outcome:
    """Open, hash (as needed) and scan one file."""
    try:
        fd = os.open(job.real, _FLAGS)
    except OSError as exc:
        return Outcome(job.real, None, _unreadable(job.real, f"cannot open: {exc.strerror}"),
                       scanned=False, hashed_bytes=0)
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return Outcome(job.real, None, _unreadable(job.real, "not a regular file"),
                           scanned=False, hashed_bytes=0)
        key = _stat_key(st)
        cached = job.cached if job.cached is not None and job.cached.key == key and \
            not job.rescan else None
        entry = Entry(key, dict(cached.digests) if cached else {},
                      cached.scan if cached else None, cached.scanned_with if cached else "")
        missing = tuple(a for a in job.need if a not in entry.digests)
        hashed = 0
        try:
            if missing:
                entry.digests.update(_digests(fd, st.st_size, missing))
                hashed = st.st_size
            report: FileReport | None = None
            if entry.scan is not None and entry.scanned_with == job.scanned_with:
                try:
                    report = report_from_json(entry.scan, job.real)
                except (ValueError, KeyError, TypeError):
                    report = None
            scanned = report is None
            if report is None:
                report = _scan(fh, job.real, st.st_size, job.options)
                entry.scan = report_to_json(report)
                entry.scanned_with = job.scanned_with
        except OSError as exc:
            return Outcome(job.real, None, _unreadable(job.real, f"read failed: {exc}",
                                                       st.st_size),
                           scanned=False, hashed_bytes=hashed)
    return Outcome(job.real, entry, report, scanned=scanned, hashed_bytes=hashed)


def _scan(fh: BinaryIO, real: str, size: int, options: ScanOptions) -> FileReport:
    try:
        return scan_fileobj(fh, real, size, options)
    except OSError:
        raise
    except Exception as exc:  # an analyzer crash on hostile input is a finding, never a pass
        # Never clean: reported as an error (exit 2) with the SH192 finding.
        message = f"the analyzer failed on this file: {type(exc).__name__}: {exc}"[:500]
        finding = Finding(rule_id="SH192", severity=RULES["SH192"].severity, message=message,
                          path=real, block_at=options.block_severity)
        return FileReport(path=real, format="unknown", size=size, findings=(finding,),
                          error=message)
