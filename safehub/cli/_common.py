"""What every subcommand shares: exit codes, output options, logging, color, progress."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TextIO

from safehub._format import OutputFormat, render_report
from safehub.findings import ScanReport

__all__ = [
    "EXIT_ERROR",
    "EXIT_FINDINGS",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "STDOUT",
    "ProgressLine",
    "add_output_options",
    "emit",
    "exit_code_for",
    "log_problem_files",
    "positive_seconds",
    "progress_enabled",
    "said_it_all",
    "use_color",
    "write_report",
]

EXIT_OK = 0  # clean, allowed, verified
EXIT_FINDINGS = 1  # findings, denied, not verified
EXIT_ERROR = 2  # usage, unreadable input, invalid policy, nothing scanned
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT
STDOUT = "-"  # `-o -`: the report on stdout (never a file named '-')

log = logging.getLogger("safehub")


def add_output_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output")
    group.add_argument("-f", "--format", choices=[f.value for f in OutputFormat],
                       default=OutputFormat.TEXT.value, help="report format (default: text)")
    group.add_argument("-o", "--output", metavar="FILE",
                       help="write the report to FILE instead of stdout ('-': stdout)")


def positive_seconds(text: str) -> float:
    """An argparse type: a finite number of seconds above 0 (``nan`` and ``inf`` are not
    limits: a limit that is silently none is refused)."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return value


def use_color(stream: TextIO) -> bool:
    """Colors only on a terminal, and never when NO_COLOR is set (https://no-color.org)."""
    return stream.isatty() and not os.environ.get("NO_COLOR")


def emit(text: str, args: argparse.Namespace) -> None:
    """The report goes to ``--output`` (see ``safehub.cli._output``) or stdout (unless
    ``-q`` text); ``-o -`` is stdout, as for most tools, even with ``-q``."""
    if getattr(args, "format", "text") in ("json", "sarif"):
        from safehub._format.escape import inert_json

        text = inert_json(text)
    from safehub.cli._output import write_stdout

    if args.output == STDOUT:
        write_stdout(text)
        return
    if args.output is not None:
        from safehub.cli._output import write_text

        write_text(args.output, text)
        log.info("report written to %s", args.output)
        return
    if args.quiet and args.format == "text":
        return
    write_stdout(text)


def write_report(report: ScanReport, args: argparse.Namespace, *, command: str) -> None:
    fmt = OutputFormat(args.format)
    color = not args.output and use_color(sys.stdout)
    emit(render_report(report, fmt, color=color, verbose=args.verbose, command=command), args)


def exit_code_for(report: ScanReport) -> int:
    """1 when anything is unsafe; else 2 when something could not be scanned or nothing was;
    else 0."""
    if report.unsafe:
        return EXIT_FINDINGS
    if not report.files or report.unscanned:
        return EXIT_ERROR
    return EXIT_OK


def log_problem_files(report: ScanReport, args: argparse.Namespace, *, not_done: str) -> None:
    """One stderr line per file that could not be checked (``not_done``: "not scanned"),
    and, with ``-q``, per unsafe file: errors, so ``-q`` (only errors on stderr) never
    leaves an unsafe or unchecked file unnamed, as ``safehub -q verify`` names what failed.
    Without ``-q`` the report names unsafe files itself."""
    if args.quiet:
        for file in report.unsafe:
            first = next((f for f in file.findings if f.blocking), None)
            log.error("%s: UNSAFE: %s", file.path,
                      f"{first.rule_id} {first.message}" if first else "unsafe")
    for item in report.unscanned:
        log.error("%s: %s: %s", item.path, not_done, item.error or "unrecognized format")


def said_it_all(report: ScanReport) -> bool:
    """True when the one input could not be read: its warning is the whole story, and a
    summary line would make one error two lines."""
    return len(report.files) == 1 and bool(report.unscanned)


def progress_enabled() -> bool:
    """Progress is drawn on a terminal only, and not with ``-q``."""
    from safehub._progress import on_terminal

    return on_terminal(sys.stderr) and log.isEnabledFor(logging.INFO)


class ProgressLine:
    """Progress of long work on stderr (a tqdm counter with the current item; byte bars
    for downloads), drawn only on a terminal and not with ``-q``."""

    def __init__(self, label: str, stream: TextIO | None = None):
        from safehub._progress import CountBar, DownloadBars

        self.stream = stream or sys.stderr
        self.enabled = progress_enabled()
        self.label = label
        self._count = CountBar(label, enabled=self.enabled, stream=self.stream)
        self._bytes = DownloadBars(self.stream) if self.enabled else None

    def __call__(self, item: str) -> None:
        self._count(item)

    def done(self) -> None:
        self._count.done()
        if self._bytes is not None:
            self._bytes.close()

    def bytes_done(self, done: int, total: int | None) -> None:
        """Draw a byte count (downloads)."""
        if self._bytes is not None:
            from safehub._fetch.http import Progress

            self._bytes(Progress(self.label, done, total))
