"""Run one command the way a user does and measure it: wall time, exit code, peak memory."""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

__all__ = ["Run", "Timing", "read_through", "repeat", "run_once"]

# Keeps the tail of a tool's output for the error column; full output is not needed.
_TAIL = 4000


@dataclass(frozen=True)
class Run:
    """One finished (or killed) command."""

    rc: int
    wall_s: float
    max_rss_mib: float
    timed_out: bool
    stdout: str = ""
    stderr: str = ""


@dataclass
class Timing:
    """Several runs of one command; the median is what the tables show."""

    runs: list[Run] = field(default_factory=list)

    @property
    def median_s(self) -> float:
        return statistics.median(r.wall_s for r in self.runs)

    @property
    def max_rss_mib(self) -> float:
        return max(r.max_rss_mib for r in self.runs)

    @property
    def timed_out(self) -> bool:
        return any(r.timed_out for r in self.runs)

    @property
    def last(self) -> Run:
        return self.runs[-1]


def _kill_group(pid: int, fired: threading.Event) -> None:
    fired.set()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _tail(fh: BinaryIO | None) -> str:
    if fh is None:
        return ""
    fh.seek(0, os.SEEK_END)
    size = fh.tell()
    fh.seek(max(0, size - _TAIL))
    return fh.read().decode("utf-8", "replace")


def run_once(argv: Sequence[str], *, cwd: Path, env: dict[str, str], timeout_s: float,
             capture: bool = True) -> Run:
    """Run ``argv`` to completion (or kill it at ``timeout_s``), timing the whole process:
    interpreter start, imports, the scan and the report, as a user's shell would see it."""
    out = tempfile.TemporaryFile() if capture else None  # noqa: SIM115 - closed below
    err = tempfile.TemporaryFile()  # noqa: SIM115
    fired = threading.Event()
    try:
        start = time.perf_counter()
        proc = subprocess.Popen(
            list(argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL,
            stdout=out if out is not None else subprocess.DEVNULL, stderr=err,
            start_new_session=True,  # its own process group, so a timeout kills helpers too
        )
        timer = threading.Timer(timeout_s, _kill_group, args=(proc.pid, fired))
        timer.start()
        # wait4 gives this child's own peak RSS (getrusage(CHILDREN) would mix all children).
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        return Run(rc=proc.returncode, wall_s=wall, max_rss_mib=usage.ru_maxrss / 1024,
                   timed_out=fired.is_set(), stdout=_tail(out), stderr=_tail(err))
    finally:
        if out is not None:
            out.close()
        err.close()


def repeat(once: Callable[[], Run], reps: int, *, slow_s: float) -> Timing:
    """Run ``reps`` times, but stop after the first run when it took longer than ``slow_s``
    (or timed out): one run of a multi-minute scan says enough."""
    timing = Timing()
    for _ in range(reps):
        run = once()
        timing.runs.append(run)
        if run.timed_out or run.wall_s > slow_s:
            break
    return timing


def read_through(path: Path, chunk: int = 1 << 20) -> None:
    """Read a file once so that every tool finds it in the page cache (the first tool timed
    would otherwise pay for the disk alone)."""
    with path.open("rb") as fh:
        while fh.read(chunk):
            pass
