"""Report formatters: one module per output format behind one function.

Every formatter turns a :class:`~safehub.findings.ScanReport` into the text that
goes to stdout (or ``--output``). Formatters never print and never read files.
"""

from __future__ import annotations

from enum import Enum

from safehub.findings import ScanReport

__all__ = ["OutputFormat", "render_report"]


class OutputFormat(str, Enum):
    TEXT = "text"
    JSON = "json"
    SARIF = "sarif"


def render_report(report: ScanReport, fmt: OutputFormat, *, color: bool = False,
                  verbose: bool = False, command: str = "scan") -> str:
    """The report in the requested format, ending with a newline."""
    if fmt is OutputFormat.JSON:
        from safehub._format.json_report import render_json

        return render_json(report, command=command)
    if fmt is OutputFormat.SARIF:
        from safehub._format.sarif import render_sarif

        return render_sarif(report)
    from safehub._format.text import render_text

    return render_text(report, color=color, verbose=verbose)
