"""Progress on a terminal: download bars, counters for long scans, a status line while the
sandbox starts. Drawn with tqdm on stderr, and only when stderr is a terminal: never on
stdout (the report), never into a pipe or a log file, never with ``-q``.

The library reports progress through callbacks (``Progress`` for downloads) and logging;
these classes are such callbacks, used by the CLI and by the torch.hub-compatible functions
when the caller asked for ``progress=True`` (torch.hub draws a bar there too).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from safehub._fetch.http import Progress

__all__ = ["CountBar", "DownloadBars", "Status", "label", "on_terminal"]


def on_terminal(stream: TextIO | None = None) -> bool:
    """Whether progress may be drawn on ``stream`` (default stderr)."""
    stream = stream or sys.stderr
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # closed or replaced streams
        return False
    return tty and not os.environ.get("SAFEHUB_NO_PROGRESS")


def _tqdm(**kwargs: Any) -> Any:
    from tqdm import tqdm

    stream = kwargs.pop("file", None) or sys.stderr
    try:
        size = os.get_terminal_size(stream.fileno())
        columns, rows = size.columns, size.lines
    except (AttributeError, ValueError, OSError):
        columns = rows = 0
    # A terminal that reports no size (a fresh pty, some CI consoles) gets 80x24; tqdm
    # would otherwise hide the bar (it draws none past the last row).
    sizing: dict[str, Any] = {"dynamic_ncols": True} if columns else {"ncols": 80}
    if not rows:
        sizing["nrows"] = 24
    return tqdm(file=stream, leave=False, **sizing, **kwargs)


def label(text: str, width: int = 40) -> str:
    """``text`` escaped to one line and cut (from the left) to ``width`` characters."""
    from safehub._format.escape import escape_line

    text = escape_line(text)
    return text if len(text) <= width else "..." + text[-(width - 3):]


class DownloadBars:
    """A ``ProgressCallback``: one byte bar per URL, closed when the download completes."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.bars: dict[str, Any] = {}

    def __call__(self, report: Progress) -> None:
        bar = self.bars.get(report.url)
        if bar is None:
            name = report.url.rstrip("/").rpartition("/")[2] or report.url
            bar = self.bars[report.url] = _tqdm(
                file=self.stream, total=report.total, unit="B", unit_scale=True,
                unit_divisor=1024, desc=label(name, 30))
        bar.update(report.done - bar.n)
        if report.total is not None and report.done >= report.total:
            bar.close()
            del self.bars[report.url]

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


class CountBar:
    """Counts items of long work (files scanned, hashed) with the current one's name."""

    def __init__(self, label: str, *, enabled: bool, stream: TextIO | None = None):
        self.label = label
        self.enabled = enabled
        self.stream = stream
        self.bar: Any = None  # drawn from the first item on

    def __call__(self, item: str) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            self.bar = _tqdm(file=self.stream, desc=self.label, unit=" files")
        self.bar.set_postfix_str(label(item), refresh=False)
        self.bar.update(1)

    def done(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Status:
    """A one-line status (``safehub: starting the sandbox...``), erased when work ends.
    ``text`` is shown as given: escape what came from outside (``label``)."""

    def __init__(self, text: str, *, enabled: bool, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        if enabled:
            self.stream.write(f"safehub: {text}...")
            self.stream.flush()

    def done(self) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.enabled = False
