"""Human-readable report: one block per file, findings with what they would do and the fix.

Everything that came from the scanned files (names, record locations, payloads, error
texts) goes through ``escape_line``; decompiled source is a marked block (``escape_block``).
"""

from __future__ import annotations

from safehub._format.escape import escape_block
from safehub._format.escape import escape_line as _e
from safehub.findings import FileReport, Finding, ScanReport, Verdict
from safehub.rules import RULES, Severity

__all__ = ["render_text", "summary_line"]

_VERDICT_COLOR = {Verdict.CLEAN: "32", Verdict.UNSAFE: "31", Verdict.UNKNOWN: "33",
                  Verdict.ERROR: "33"}
_SEVERITY_COLOR = {Severity.CRITICAL: "1;31", Severity.HIGH: "31", Severity.MEDIUM: "33",
                   Severity.LOW: "36", Severity.INFO: "2"}


def _paint(text: str, code: str, color: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if color else text


def render_text(report: ScanReport, *, color: bool = False, verbose: bool = False) -> str:
    lines: list[str] = []
    for file in report.files:
        lines.extend(_file_block(file, color, verbose))
    if verbose:
        for skipped in report.skipped:
            lines.append(f"{_paint('SKIPPED', '2', color)}  {_e(skipped.path)}: "
                         f"{_e(skipped.reason)}")
    if report.policy is not None:
        lines.append(f"policy: {_e(report.policy.describe())}")
    return "\n".join(lines) + ("\n" if lines else "")


def _file_block(file: FileReport, color: bool, verbose: bool) -> list[str]:
    verdict = file.verdict
    label = _paint(f"{verdict.value.upper():7}", _VERDICT_COLOR[verdict], color)
    head = f"{label}  {_e(file.path)}  ({_e(file.format)}"
    head += f", {len(file.records)} records)" if verbose and file.records else ")"
    lines = [head]
    if file.error:
        lines.append(f"    error: {_e(file.error)}")
    shown = [f for f in file.findings if verbose or f.blocking or verdict is Verdict.UNKNOWN]
    for finding in shown:
        lines.extend(_finding_lines(finding, color))
    hidden = len(file.findings) - len(shown)
    if hidden:
        lines.append(f"    ({hidden} informational or allowed findings; -v shows them)")
    for location, source in file.decompiled:
        lines.append(f"    decompiled {_e(location)} (fickling):")
        lines.extend(escape_block(source, indent="        "))
    return lines


def _finding_lines(finding: Finding, color: bool) -> list[str]:
    sev = _paint(f"{finding.severity.value:8}", _SEVERITY_COLOR[finding.severity], color)
    where = []
    if finding.location:
        where.append(_e(finding.location))
    if finding.offset is not None:
        where.append(f"offset {finding.offset}")
    place = f"  [{', '.join(where)}]" if where else ""
    lines = [f"    {finding.rule_id} {sev} {_e(finding.message)}{place}"]
    if finding.payload and finding.payload != finding.subject:
        lines.append(f"        would run: {_e(finding.payload)}")
    if finding.allowed_by:
        lines.append(f"        allowed by: {_e(finding.allowed_by)}")
    elif finding.blocking:
        lines.append(f"        fix: {RULES[finding.rule_id].help}")
    return lines


def summary_line(report: ScanReport) -> str:
    """One line for stderr: how many files, and how they came out."""
    counts = {v: 0 for v in Verdict}
    for file in report.files:
        counts[file.verdict] += 1
    not_scanned = counts[Verdict.UNKNOWN] + counts[Verdict.ERROR]
    text = (f"{len(report.files)} files: {counts[Verdict.CLEAN]} clean, "
            f"{counts[Verdict.UNSAFE]} unsafe, {not_scanned} not scanned")
    if report.skipped:
        text += f"; {len(report.skipped)} skipped"
    return text
