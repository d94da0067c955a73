"""The oracle: the loaders' own parsers, run on the same bytes as the scanner.

``run_real`` runs the real parsers (``child.py``) in a child process under rlimits with
every capability stubbed, and returns what each resolved and where each record ended.
``stream_differences`` and ``file_differences`` compare that ground truth with the
scanner: the scanner is wrong when a real parser resolves a name the scanner did not
report, or ends a record where the scanner did not, or when a file whose loader resolves
a name outside the allowlist is called clean.

Readers (how a loader calls the parser):

- ``c_file``: ``_pickle.c`` reading a file object without ``peek`` (``pickle.load`` of an
  ``io.BytesIO``; torch.load reads data.pkl this way),
- ``c_bytes``: ``_pickle.c`` reading bytes (``pickle.loads``),
- ``py``: ``pickle._Unpickler`` (joblib's unpickler),
- ``c_file_all``: ``c_file`` stream after stream on one file object (torch's legacy
  format, loaders that read on),
- ``torch_zip``: torch.serialization's zip path (PyTorchFileReader, data.pkl in BytesIO),
- ``numpy``: ``numpy.load(allow_pickle=True)``, every member of an npz,
- ``joblib``: ``joblib.load``,
- ``torch_legacy``: ``torch.load(path, weights_only=False)`` itself on a file, with a stub
  ``pickle_module``: the legacy tar path (every ``pickle_module.load`` of the ``storages``
  and ``tensors`` members, torch's UnpicklerWrapper on ``pickle``) and, when tarfile
  fails, the raw legacy stream (magic number, protocol, system info, the object, storage
  keys). Each record's ``where`` names the file it was read from (``storages``,
  ``tensors``, ``pickle`` for the tar member, ``input.pt`` for the file itself); names
  torch resolves itself (``StorageType``) are recorded as ``<storage>.NAME``.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import resource
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from safehub._scanner.allowlist import DEFAULT_ALLOWED
from safehub._scanner.pickle_vm import (
    FRAMES_BYTES,
    FRAMES_FILE,
    PickleCursor,
    StreamResult,
    run_stream,
)
from safehub._scanner.source import BytesSource
from safehub.findings import FileReport, Verdict
from safehub.scan import scan_file

__all__ = [
    "FILE_READERS",
    "PICKLE_READERS",
    "Real",
    "Record",
    "file_differences",
    "legacy_stream_differences",
    "run_real",
    "scan_bytes",
    "scanner_stream",
    "stream_differences",
    "streams_differences",
]

PICKLE_READERS = ("c_file", "c_bytes", "py")
FILE_READERS = ("torch_zip", "numpy", "joblib", "torch_legacy")
_ROOT = Path(__file__).resolve().parents[3]
CPU_SECONDS = 60  # per input; the child raises its soft limit input by input
ADDRESS_SPACE = 6 << 30


@dataclass
class Record:
    names: list[str]  # "module.name" as find_class received them, in order
    ok: bool  # the unpickler returned
    end: int | None  # file position after load() (where the next read would start)
    error: str = ""
    where: str = ""  # the file the record was read from, when a loader reads several


@dataclass
class Real:
    records: list[Record] = field(default_factory=list)
    crashed: str = ""  # the child died on this input (rlimit, crash)

    @property
    def names(self) -> list[str]:
        return [n for r in self.records for n in r.names]


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_SECONDS, 24 * 3600))
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


class _Child:
    """One long-lived child (imports torch, numpy and joblib once), restarted when it dies."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None

    def _start(self) -> subprocess.Popen[bytes]:
        # One thread: RLIMIT_CPU counts every thread, and the budget is meant for the
        # parser of the input at hand.
        env = dict(os.environ, PYTHONPATH=str(_ROOT), PYTHONWARNINGS="ignore",
                   OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        return subprocess.Popen(
            [sys.executable, "-m", "tests.scanner.oracle.child"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=_ROOT, env=env,
            preexec_fn=_limits)

    def run(self, items: list[tuple[str, bytes]]) -> tuple[list[str], int | None]:
        """JSON lines for a prefix of ``items``; the exit status if the child died."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        proc = self.proc
        assert proc.stdin is not None and proc.stdout is not None
        blob = pickle.dumps(items)
        lines: list[str] = []
        try:
            proc.stdin.write(struct.pack("<I", len(blob)) + blob)
            proc.stdin.flush()
            for _ in items:
                line = proc.stdout.readline()
                if not line:
                    break
                lines.append(line.decode())
        except BrokenPipeError:
            pass
        if len(lines) < len(items):
            proc.kill()
            return lines, proc.wait()
        return lines, None


_CHILD = _Child()


def run_real(items: list[tuple[str, bytes]]) -> list[Real]:
    """The real parsers' view of each ``(reader, data)``, in a rlimited child process."""
    results: list[Real] = []
    pending = list(items)
    while pending:
        lines, died = _CHILD.run(pending)
        for line in lines:
            raw = json.loads(line)
            results.append(Real([Record([f"{m}.{n}" for m, n in r["names"]],
                                        r["ok"], r["end"], r["error"], r.get("where", ""))
                                 for r in raw["records"]]))
        pending = pending[len(lines):]
        if pending:  # the child died on the next input: record it, go on with the rest
            results.append(Real(crashed=f"child exited {died}"))
            pending = pending[1:]
    return results


def scanner_stream(reader: str, data: bytes) -> StreamResult:
    """The scanner's analysis of one stream as ``reader`` reads it."""
    frames = FRAMES_BYTES if reader == "c_bytes" else FRAMES_FILE
    return run_stream(BytesSource(data), frames=frames, python=reader == "py")


def stream_differences(reader: str, data: bytes, real: Real,
                       res: StreamResult | None = None) -> list[str]:
    """Where the scanner's stream analysis misses what the real parser did."""
    if real.crashed or not real.records:
        return [f"real parser: {real.crashed or 'no record'}"] if real.crashed else []
    rec = real.records[0]
    res = res if res is not None else scanner_stream(reader, data)
    seen = {g.raw for g in res.globals}
    out = []
    for name in rec.names:
        if name.startswith("__ext__.") and res.extensions:
            continue
        if name.startswith("<persistent_load>") and res.persistent:
            continue
        if name not in seen and not res.computed and not res.limit:
            out.append(f"{reader}: real parser resolves {name!r}, scanner does not")
    if rec.ok and not res.limit:
        if not res.stopped:
            out.append(f"{reader}: real parser loads to the end, scanner stops: {res.error}")
        elif rec.end is not None and rec.end != res.end:
            out.append(f"{reader}: record ends at {rec.end}, scanner says {res.end}")
    return out


def streams_differences(data: bytes, real: Real, reader: str = "c_file") -> list[str]:
    """Stream after stream (``c_file_all``): each record the real parser reads must be one
    the scanner reads, starting and ending at the same offsets, with its names reported.
    ``reader="c_bytes"``: the records of a file read through ``peek`` (see
    :func:`legacy_stream_differences`), which the scanner reads as bytes."""
    if real.crashed:
        return [f"real parser: {real.crashed}"]
    cursor = PickleCursor(BytesSource(data),
                          frames=FRAMES_BYTES if reader == "c_bytes" else FRAMES_FILE)
    out = []
    for n, rec in enumerate(real.records):
        if cursor.at_eof():
            if rec.ok or rec.names:  # a load() at the end of the file that found nothing
                out.append(f"record {n}: the real parser reads it, the scanner finds no "
                           "bytes left")
            break
        res = cursor.stream()
        out += [f"record {n}: {d}" for d in stream_differences(
            reader, data, Real([rec]), res)]
        if not res.stopped:
            break
    return out


def legacy_stream_differences(data: bytes, real: Real) -> list[str]:
    """torch's raw legacy stream (read when tarfile refuses the file): each record torch
    reads from the file itself must be one the scanner reads from byte 0, with the same
    bounds and names. torch reads a file opened with ``open()``, a buffered reader with
    ``peek``: _pickle.c consumes only what it parsed, so records are bounded as when
    reading bytes (after a STOP inside a frame the next record starts after the STOP).
    The scanner reads the file that way too when a frame is split (SH160)."""
    raw = [r for r in real.records if r.where == "input.pt"]
    if real.crashed or not raw or len(raw) != len(real.records):
        return []
    names = [[n for n in r.names if not n.startswith("<storage>.")] for r in raw]
    stripped = Real([Record(n, r.ok, r.end, r.error, r.where) for n, r in zip(names, raw,
                                                                              strict=True)])
    return [f"torch_legacy {d}" for d in streams_differences(data, stripped, "c_bytes")]


def _allowed(name: str) -> bool:
    import _compat_pickle

    if name in DEFAULT_ALLOWED:
        return True
    module, _, attr = name.rpartition(".")
    mapped = _compat_pickle.NAME_MAPPING.get((module, attr))
    if mapped is None:
        mapped = (_compat_pickle.IMPORT_MAPPING.get(module, module), attr)
    return ".".join(mapped) in DEFAULT_ALLOWED


def scan_bytes(data: bytes) -> FileReport:
    return scan_file(io.BytesIO(data), "oracle-input")


# Findings after which the scanner need not name every global: names computed at load
# time, extension codes, limits hit, analyzer errors.
_UNNAMED = {"SH102", "SH103", "SH105", "SH191", "SH192"}


def file_differences(reader: str, real: Real, report: FileReport) -> list[str]:
    """A file is called clean although its loader resolves a name outside the allowlist
    (for torch.load's legacy reader: or a name it resolves is not named at all)."""
    if real.crashed:
        return [] if report.verdict is not Verdict.CLEAN else [
            f"{reader}: clean, but the real loader crashed: {real.crashed}"]
    # torch's own lookups: persistent ids of the zip reader, and StorageType (legacy),
    # which returns only torch's storage classes.
    bad = [n for n in real.names if not _allowed(n) and not (
        reader == "torch_zip" and n == "<persistent_load>.") and not (
        reader == "torch_legacy" and n.startswith("<storage>."))]
    if report.verdict is not Verdict.CLEAN:
        if reader != "torch_legacy" or any(f.rule_id in _UNNAMED for f in report.findings):
            return []
        # torch.load's records must each be read: every name it resolves is named.
        said = " ".join(f"{f.subject} {f.message}" for f in report.findings)
        return [f"{reader}: unsafe, but the loader's {n!r} is not named" for n in
                dict.fromkeys(bad) if n.rpartition(".")[2] not in said]
    return [f"{reader}: clean, but the loader resolves {n!r}" for n in dict.fromkeys(bad)]
