"""Inter-process locks on cache entries (``fcntl.flock`` on a lock file per entry).

Writers hold the lock exclusively while they download and install an entry;
readers hold it shared while they open an entry and read its record, so they
never see a file from one version and a record from another. The kernel drops
a lock when its holder dies, so a killed download never blocks the next one.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["entry_lock"]


@contextmanager
def entry_lock(path: Path, *, shared: bool = False) -> Iterator[None]:
    """Hold the lock file at ``path`` (created if needed) for the ``with`` block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
