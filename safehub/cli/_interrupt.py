"""Ctrl-C for the CLI: a KeyboardInterrupt, but never raised inside an import.

A KeyboardInterrupt raised while a native extension initialises does not always unwind
as an exception: pydantic_core imports ``datetime`` from Rust during its init, and pyo3
turns the interrupt into a panic that prints a Rust backtrace and exits 1. So while
the import machinery is on the stack, an interrupt is held and delivered again a moment
later, until it lands outside any import: it is late by at most the rest of the import
(one still held when the command has finished is dropped: its work is done).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["interrupts_outside_imports"]

_RETRY_S = 0.05
_IMPORT_CODE = ("<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>")


def _importing(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code.co_filename in _IMPORT_CODE:
            return True
        frame = frame.f_back
    return False


class _Handler:
    def __init__(self) -> None:
        self.active = True
        self.timer: threading.Timer | None = None
        self.main = threading.main_thread().ident or 0

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if not _importing(frame):
            raise KeyboardInterrupt
        self.timer = threading.Timer(_RETRY_S, self._again)
        self.timer.daemon = True
        self.timer.start()

    def _again(self) -> None:
        # A real signal to the main thread, not _thread.interrupt_main: that one only runs
        # the handler once the main thread executes bytecode again, so a main thread
        # blocked in a system call by then (select on the sandbox, open of a FIFO) would
        # keep the interrupt until the call returned.
        if self.active:
            signal.pthread_kill(self.main, signal.SIGINT)

    def stop(self) -> None:
        self.active = False
        if self.timer is not None:
            self.timer.cancel()


@contextmanager
def interrupts_outside_imports() -> Iterator[None]:
    """Within the block, SIGINT raises KeyboardInterrupt only outside imports. Does
    nothing where SIGINT is not Python's default (a caller chose its own handling) or
    off the main thread (where handlers cannot be set)."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    handler = _Handler()
    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        handler.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)
