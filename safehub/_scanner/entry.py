"""Scanning one open file, and the globals no configuration may allow.

The public face is :mod:`safehub.scan`; the private packages (fetch, enforce, the
policy schema) use these directly.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import BinaryIO

from safehub._scanner import knowledge
from safehub._scanner.context import ScanOptions
from safehub._scanner.engine import scan_fileobj
from safehub.errors import PolicyError, PolicyIssue
from safehub.findings import FileReport
from safehub.rules import Severity

__all__ = ["check_allowable", "scan_file"]

# What an allowance can name: a dotted Python name, or a module's definitions (module.*).
_GLOBAL_NAME = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*(?:\.\*)?")


def scan_file(fh: BinaryIO, name: str, *, options: ScanOptions | None = None) -> FileReport:
    """Scan an already open, seekable binary file.

    Use this to scan exactly the bytes you will load: keep the file open, scan
    it, then load from the same descriptor.
    """
    fh.seek(0, os.SEEK_END)
    size = fh.tell()
    return scan_fileobj(fh, name, size, options or ScanOptions())


def check_allowable(names: Iterable[str], *, source: str = "allowed_globals") -> None:
    """Refuse to allow names that execute code, whatever a configuration says, and
    entries that name no global (``''``, ``'*'``: they match nothing and would be
    silently useless).

    Raises :class:`~safehub.errors.PolicyError` listing every such name.
    """
    issues = []
    for name in names:
        if not _GLOBAL_NAME.fullmatch(name):
            issues.append(PolicyIssue(source, name,
                                      "is not a dotted Python name (module.name or module.*)"))
            continue
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
