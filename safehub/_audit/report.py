"""The audit report, and its text, JSON and SARIF renderings.

The findings live in a :class:`~safehub.findings.ScanReport` (one entry per file,
plus one per repository folder, whose ``format`` names its kind), so the scan
formatters render them: JSON keeps the scan schema and adds an ``audit`` section
(provenance of every entry, what was audited, what ``--fix`` did); SARIF adds the
provenance to each result's properties.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from safehub._audit.model import Provenance
from safehub._format.escape import escape_line, json_clean
from safehub.findings import FileReport, ScanReport, Verdict

__all__ = ["AUDIT_SCHEMA_VERSION", "AuditReport", "AuditStats", "FixRecord", "render_audit"]

AUDIT_SCHEMA_VERSION = "1"


@dataclass(frozen=True)
class AuditStats:
    """How much work the audit did."""

    scanned: int = 0  # files scanned this time
    reused: int = 0  # files unchanged since the last audit (not scanned or hashed again)
    hashed_bytes: int = 0
    workers: int = 1
    seconds: float = 0.0

    def to_json(self) -> dict[str, object]:
        return {"scanned": self.scanned, "reused": self.reused,
                "hashed_bytes": self.hashed_bytes, "workers": self.workers,
                "seconds": round(self.seconds, 3)}


@dataclass(frozen=True)
class FixRecord:
    """What ``--fix`` did with one file (or why it left it alone)."""

    original: str
    action: str  # "converted", "planned" (a dry run), "skipped" or "failed"
    reason: str = ""
    converted: str | None = None
    metadata: str | None = None
    quarantined: str | None = None
    original_sha256: str | None = None
    converted_sha256: str | None = None
    time: str | None = None

    def to_json(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if v is not None and v != ""}


@dataclass(frozen=True)
class AuditReport:
    """The result of an audit.

    ``report`` holds an entry per file and per repository folder; ``kinds`` says which
    entries are folders (path -> kind); ``provenance`` where each entry came from.
    """

    report: ScanReport
    provenance: Mapping[str, Provenance] = field(default_factory=dict)
    kinds: Mapping[str, str] = field(default_factory=dict)
    caches: tuple[tuple[str, str], ...] = ()
    policy: str = ""
    lockfile: str | None = None
    state: str | None = None
    stats: AuditStats = field(default_factory=AuditStats)
    fixes: tuple[FixRecord, ...] = ()
    remote: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # requests, bytes

    @property
    def files(self) -> list[FileReport]:
        """Entries that are files (not folders)."""
        return [f for f in self.report.files if f.path not in self.kinds]

    @property
    def folders(self) -> list[FileReport]:
        """Entries that are repository folders (and torch's trusted_list)."""
        return [f for f in self.report.files if f.path in self.kinds]

    @property
    def unsafe(self) -> list[FileReport]:
        """Entries with a blocking finding."""
        return self.report.unsafe

    @property
    def clean(self) -> bool:
        """True only when something was audited and every entry is clean."""
        return self.report.clean

    def summary(self) -> str:
        """One line for stderr."""
        counts = {v: 0 for v in Verdict}
        for f in self.files:
            counts[f.verdict] += 1
        bad_folders = sum(1 for f in self.folders if f.verdict is Verdict.UNSAFE)
        text = (f"{len(self.files)} files: {counts[Verdict.CLEAN]} clean, "
                f"{counts[Verdict.UNSAFE]} unsafe, "
                f"{counts[Verdict.UNKNOWN] + counts[Verdict.ERROR]} not checked; "
                f"{len(self.folders)} folders, {bad_folders} with findings")
        s = self.stats
        text += (f" ({s.scanned} scanned, {s.reused} unchanged since the last audit, "
                 f"{s.hashed_bytes / (1 << 30):.2f} GiB hashed, {s.seconds:.1f} s)")
        if self.report.skipped:
            text += f"; {len(self.report.skipped)} skipped"
        return text


def render_audit(audit: AuditReport, fmt: str, *, color: bool = False,
                 verbose: bool = False) -> str:
    """The report as ``text``, ``json`` or ``sarif``, ending with a newline."""
    if fmt == "json":
        return _json(audit)
    if fmt == "sarif":
        return _sarif(audit)
    return _text(audit, color=color, verbose=verbose)


def _text(audit: AuditReport, *, color: bool, verbose: bool) -> str:
    from safehub._format.text import render_text

    lines: list[str] = []
    hidden = 0
    for entry in audit.report.files:
        if not verbose and entry.verdict is Verdict.CLEAN and not any(
                f.blocking for f in entry.findings):
            hidden += 1
            continue
        block = render_text(ScanReport(files=(entry,)), color=color, verbose=verbose)
        lines.append(block.rstrip("\n"))
        provenance = audit.provenance.get(entry.path)
        if verbose and provenance is not None:
            lines.append(f"    from: {escape_line(provenance.describe())}")
    if verbose:
        lines.extend(f"SKIPPED  {escape_line(s.path)}: {escape_line(s.reason)}"
                     for s in audit.report.skipped)
    for fix in audit.fixes:
        if fix.action == "converted":
            lines.append(f"FIXED    {escape_line(fix.original)} -> "
                         f"{escape_line(fix.converted)} (original moved to "
                         f"{escape_line(fix.quarantined)})")
        elif fix.action == "planned":
            lines.append(f"PLANNED  {escape_line(fix.original)} -> "
                         f"{escape_line(fix.converted)} (original would move to "
                         f"{escape_line(fix.quarantined)})")
        else:
            lines.append(f"{fix.action.upper():8} {escape_line(fix.original)}: "
                         f"{escape_line(fix.reason)}")
    if hidden:
        lines.append(f"({hidden} clean entries not shown; -v shows them with their provenance)")
    if audit.policy:
        lines.append(f"policy: {escape_line(audit.policy)}")
    return "\n".join(lines) + ("\n" if lines else "")


def audit_section(audit: AuditReport) -> dict[str, Any]:
    """What the JSON report adds to the scan schema."""
    return {
        "schema_version": AUDIT_SCHEMA_VERSION,
        "caches": [{"layout": layout, "path": path} for layout, path in audit.caches],
        "policy": audit.policy,
        "lockfile": audit.lockfile,
        "state": audit.state,
        "stats": audit.stats.to_json(),
        "folders": dict(sorted(audit.kinds.items())),
        "provenance": {path: p.to_json() for path, p in sorted(audit.provenance.items())},
        "fixes": [f.to_json() for f in audit.fixes],
        "remote": {path: {"requests": r, "bytes": b}
                   for path, (r, b) in sorted(audit.remote.items())},
    }


def _json(audit: AuditReport) -> str:
    from safehub._format.json_report import build_json

    body: dict[str, Any] = build_json(audit.report, command="audit").model_dump(mode="json")
    body["audit"] = json_clean(audit_section(audit))
    return json.dumps(body, indent=2) + "\n"


def _sarif(audit: AuditReport) -> str:
    from safehub._format.sarif import render_sarif

    doc = json.loads(render_sarif(audit.report))
    run = doc["runs"][0]
    results = run["results"]
    for result, finding in zip(results, audit.report.findings, strict=True):
        provenance = audit.provenance.get(finding.path)
        if provenance is not None:
            result.setdefault("properties", {})["provenance"] = json_clean(
                provenance.to_json())
    run.setdefault("properties", {})["safehub.audit"] = {
        "policy": audit.policy, "lockfile": audit.lockfile,
        "caches": json_clean([{"layout": layout, "path": path}
                              for layout, path in audit.caches])}
    return json.dumps(doc, indent=2) + "\n"
