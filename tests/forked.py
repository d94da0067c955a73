"""Running a piece of a test in a forked copy of the test process (another uid, a fork of
a process holding a Sandbox), and getting back what it reports."""

from __future__ import annotations

import os
from collections.abc import Callable


def run_forked(work: Callable[[], bytes | None]) -> bytes:
    """Run ``work`` in a forked child; returns the bytes it returned. The child exits with
    ``os._exit`` (it never returns into pytest), 1 when ``work`` raised: then this fails."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read)
            os.write(write, work() or b"")
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as fh:
        told = fh.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the forked part of the test failed"
    return told
