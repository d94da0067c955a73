"""The small files a user names for safehub to keep (an audit state, a journal, a lockfile, a
signature, a converted model): read without blocking or reading without end, and replaced
only when what is there is a regular file.

A name can point at anything: a FIFO (opening it for reading waits for a writer forever), a
device (``/dev/zero`` never ends; renaming a new file onto ``/dev/null`` as root replaces
the system's device node), a folder, a socket, a file of a kernel pseudo-filesystem
(``/proc``, ``/sys``). Such a name is refused in one error naming it, before any work, and
nothing is opened for reading or renamed onto it. A symbolic link is replaced as a link
(its target is not touched) and read through.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO, TextIO

from safehub.errors import SafehubError

__all__ = ["NotARegularFile", "append_named", "check_replaceable", "in_pseudo_fs", "kind_of",
           "open_named", "read_named"]

_PSEUDO_FS = ("/proc", "/sys")


def in_pseudo_fs(path: str | os.PathLike[str]) -> str | None:
    """The real path of ``path`` when it lies in a kernel pseudo-filesystem, else None."""
    real = os.path.realpath(path)
    if any(real == root or real.startswith(root + "/") for root in _PSEUDO_FS):
        return real
    return None


def kind_of(mode: int) -> str:
    """What a file of this mode is, in words."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


class NotARegularFile(SafehubError):
    """The name points at a FIFO, device, socket or folder, or into /proc or /sys: refused
    whatever the caller's policy for other read or write failures (exit 2)."""


def _not_regular(path: str | os.PathLike[str], what: str, mode: int) -> NotARegularFile:
    return NotARegularFile(f"the {what} is {kind_of(mode)}, not a regular file", subject=str(path),
                        fix=f"name a regular file for the {what}")


def check_replaceable(path: str | os.PathLike[str], *, what: str) -> None:
    """Raise :class:`NotARegularFile` when renaming a new file onto ``path`` would destroy
    something that is not a regular file (a device, FIFO, socket or folder). A missing name
    or a symbolic link (replaced as a link) is fine; any other problem (a missing or
    unreadable folder) is left to the write, which reports its own failure."""
    real = in_pseudo_fs(path)
    if real is not None:
        raise NotARegularFile(f"the {what} would be written to {real}, in a kernel "
                           f"pseudo-filesystem, not a file", subject=str(path),
                           fix=f"name a regular file for the {what}")
    try:
        st = os.lstat(path)
    except OSError:
        return
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        raise _not_regular(path, what, st.st_mode)


def open_named(path: str | os.PathLike[str], *, what: str) -> BinaryIO | None:
    """The regular file at ``path`` (through links) open for reading, or None when it does
    not exist. Raises :class:`NotARegularFile` for anything else that is there (opened
    without blocking, never read), :class:`SafehubError` when it cannot be opened."""
    fd = _open_regular(path, os.O_RDONLY, what=what, verb="read")
    return None if fd is None else os.fdopen(fd, "rb")


def append_named(path: str | os.PathLike[str], *, what: str) -> TextIO:
    """The regular file at ``path`` (through links; created when missing) open for
    appending text. Raises :class:`NotARegularFile` for anything else that is there: a
    FIFO swapped in after a check (:func:`check_replaceable`) would block a plain open
    forever, waiting for a reader."""
    fd = _open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, what=what, verb="write")
    if fd is None:  # with O_CREAT: the folder is missing
        raise SafehubError(f"cannot write the {what}: its folder does not exist",
                           subject=str(path), fix="name a file in an existing folder")
    return os.fdopen(fd, "a", encoding="utf-8")


def _open_regular(path: str | os.PathLike[str], flags: int, *, what: str,
                  verb: str) -> int | None:
    p = Path(path)
    try:
        # O_NONBLOCK: a FIFO in the file's place must not block the open; it is refused.
        fd = os.open(p, flags | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a socket, or a FIFO without a reader (for writing)
            mode = stat.S_IFSOCK if stat.S_ISSOCK(_lmode(p)) else stat.S_IFIFO
            raise _not_regular(p, what, mode) from None
        raise SafehubError(f"cannot {verb} the {what}: {exc.strerror}", subject=str(p),
                           fix="check the path and its permissions") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise _not_regular(p, what, mode)
    os.set_blocking(fd, True)
    return fd


def _lmode(path: Path) -> int:
    try:
        return os.stat(path).st_mode
    except OSError:
        return 0


def read_named(path: str | os.PathLike[str], *, what: str, cap: int) -> bytes | None:
    """The bytes of the regular file at ``path`` (:func:`open_named`), or None when it does
    not exist; raises :class:`SafehubError` for a file larger than ``cap`` bytes."""
    p = Path(path)
    opened = open_named(p, what=what)
    if opened is None:
        return None
    with opened as fh:
        try:
            data = fh.read(cap + 1)
        except OSError as exc:
            raise SafehubError(f"cannot read the {what}: {exc.strerror}", subject=str(p),
                               fix="check the path and its permissions") from None
    if len(data) > cap:
        raise SafehubError(f"the {what} is larger than {cap} bytes", subject=str(p),
                           fix=f"name the {what} safehub wrote, or a new name")
    return data
