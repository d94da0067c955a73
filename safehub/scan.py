"""Static scanning of model files: what would deserializing them do?

>>> from safehub.scan import scan
>>> report = scan(["model.pt"])
>>> report.clean

Nothing is unpickled or imported: files are parsed as data. Formats are
recognized by content (raw pickle, torch zip and legacy, TorchScript,
torch.package, numpy .npy/.npz, joblib with or without compression,
safetensors); anything else is reported as unknown, never as clean.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import BinaryIO

from safehub._callable_module import make_module_callable
from safehub._scanner import knowledge
from safehub._scanner.context import ScanOptions
from safehub._scanner.engine import scan_fileobj, scan_paths
from safehub._scanner.pickle_vm import Limits
from safehub.errors import PolicyError, PolicyIssue
from safehub.findings import FileReport, Finding, ScanReport, Skipped, Verdict
from safehub.rules import Severity

__all__ = [
    "FileReport",
    "Finding",
    "Limits",
    "ScanOptions",
    "ScanReport",
    "Severity",
    "Skipped",
    "Verdict",
    "check_allowable",
    "scan",
    "scan_file",
]


def scan(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    options: ScanOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> ScanReport:
    """Scan files and folders (recursively) and report every finding.

    ``progress`` is called with each path before it is scanned (the library never
    draws progress itself).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    return scan_paths([os.fspath(p) for p in paths], options or ScanOptions(), progress)


def scan_file(fh: BinaryIO, name: str, *, options: ScanOptions | None = None) -> FileReport:
    """Scan an already open, seekable binary file.

    Use this to scan exactly the bytes you will load: keep the file open, scan
    it, then load from the same descriptor.
    """
    fh.seek(0, os.SEEK_END)
    size = fh.tell()
    return scan_fileobj(fh, name, size, options or ScanOptions())


def check_allowable(names: Iterable[str], *, source: str = "allowed_globals") -> None:
    """Refuse to allow names that execute code, whatever a configuration says.

    Raises :class:`~safehub.errors.PolicyError` listing every such name.
    """
    issues = []
    for name in names:
        probe = name[:-2] if name.endswith(".*") else name
        info = knowledge.lookup(probe)
        if info is not None and info.severity is Severity.CRITICAL:
            issues.append(PolicyIssue(source, name,
                                      f"cannot be allowed: it {info.explanation}"))
        elif name.endswith(".*") and probe.count(".") < 1:
            issues.append(PolicyIssue(source, name,
                                      "a wildcard must name a module below the top level"))
    if issues:
        raise PolicyError("some allowed globals can never be allowed", subject=source,
                          fix="remove them; load such files only in the sandbox",
                          issues=issues)


# `import safehub.scan` makes `safehub.scan` this module: keep `safehub.scan(...)` working.
make_module_callable(__name__, scan)
