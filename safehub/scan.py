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

from safehub._callable_module import make_module_callable
from safehub._scanner.context import ScanOptions
from safehub._scanner.engine import scan_paths
from safehub._scanner.entry import check_allowable, scan_file
from safehub._scanner.pickle_vm import Limits
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


# `import safehub.scan` makes `safehub.scan` this module: keep `safehub.scan(...)` working.
make_module_callable(__name__, scan)
