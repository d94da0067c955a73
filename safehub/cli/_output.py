"""``-o FILE``: write a report where the user pointed, the way shell redirection and common
tools do, without damaging anything.

- A regular file (or a new name in an existing folder) is replaced atomically: the report is
  written beside it and renamed over it, so a reader sees the old report or the new one, and
  Ctrl-C leaves no partial file. A new file gets the umask's mode (0666 & ~umask); an existing
  one keeps its mode.
- A symlink is written through to its target, as ``>`` does; the link itself stays.
- A character device or a FIFO (``/dev/stdout``, ``/dev/null``, a named pipe) is opened and
  written; it is never replaced by a regular file.
- A folder, a missing folder, a block device, a socket, or anything under /proc or /sys is
  refused before any work is done, in one line, and nothing is created.

Stdout itself can fail: a reader that went away (``| head``) ends the output quietly, and
the exit code still says what was found; a full disk (``> /dev/full``) is one error line.
Neither is an internal error.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import sys

from safehub._format.escape import escape_line
from safehub._namedfile import in_pseudo_fs
from safehub.errors import SafehubError

__all__ = ["OutputTargetError", "check_folder", "check_target", "write_stdout", "write_text"]

class OutputTargetError(SafehubError):
    """The ``-o`` target cannot take a report (a folder, a missing folder, /proc...)."""


def _refuse(path: str, why: str, flag: str) -> OutputTargetError:
    what = "the tensors" if flag == "--out" else "the report"
    return OutputTargetError(f"cannot write {what} to {escape_line(path)} ({flag}): {why}")


def check_target(path: str, *, flag: str = "-o") -> tuple[str, bool]:
    """Where a report for ``path`` goes: (the real path to write, whether to open it in place
    rather than replace it). Raises :class:`OutputTargetError` for targets that cannot work."""
    if not path:
        raise _refuse(path, "the name is empty", flag)
    if path.endswith("/"):
        raise _refuse(path, "the name ends in '/', which names a folder", flag)
    try:
        st = os.stat(path)  # follows links: /dev/stdout is whatever stdout is
    except OSError:
        pass
    else:
        if stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode):
            return path, True
        if stat.S_ISREG(st.st_mode) and path.startswith("/dev/"):
            # /dev/stdout redirected to a file: write it as `>` would; renaming over the
            # file would leave the shell's descriptor on the old, unlinked one.
            return path, True
    pseudo = in_pseudo_fs(path)
    if pseudo is not None:
        raise _refuse(path, f"{pseudo} is in a kernel pseudo-filesystem, not a file", flag)
    real = os.path.realpath(path)  # symlinks are written through to their target
    try:
        st = os.stat(real)
    except FileNotFoundError:
        folder = os.path.dirname(real) or "."
        if not os.path.isdir(folder):
            raise _refuse(path, f"folder {escape_line(folder)} does not exist (create it "
                          f"first)", flag) from None
        if not os.access(folder, os.W_OK | os.X_OK):
            raise _refuse(path, f"folder {escape_line(folder)} is not writable", flag) from None
        return real, False
    except OSError as exc:
        raise _refuse(path, exc.strerror or str(exc), flag) from None
    if stat.S_ISDIR(st.st_mode):
        raise _refuse(path, "it is a folder; name a file inside it", flag)
    if stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode):
        return real, True
    if not stat.S_ISREG(st.st_mode):
        kind = "block device" if stat.S_ISBLK(st.st_mode) else "socket or special file"
        raise _refuse(path, f"it is a {kind}", flag)
    return real, False


def check_folder(path: str, *, flag: str) -> None:
    """A folder option (``--quarantine DIR``): an existing folder, or a new name in an
    existing folder. Anything else is refused before any work is done."""
    if not path:
        raise OutputTargetError(f"{flag}: the folder name is empty")
    real = os.path.realpath(path)
    if in_pseudo_fs(real) is not None:
        raise OutputTargetError(f"{flag} {escape_line(path)}: {real} is in a kernel "
                                f"pseudo-filesystem, not a folder")
    if os.path.lexists(real) and not os.path.isdir(real):
        raise OutputTargetError(f"{flag} {escape_line(path)}: it exists and is not a folder "
                                f"(name a folder, or a new name in an existing folder)")
    parent = os.path.dirname(real) or "."
    if not os.path.exists(real) and not os.path.isdir(parent):
        raise OutputTargetError(f"{flag} {escape_line(path)}: folder {escape_line(parent)} "
                                f"does not exist (create it first)")


def _stdout_to_devnull() -> None:
    """Point stdout's descriptor at /dev/null, so the interpreter's final flush of what is
    still buffered cannot fail again at exit."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        pass  # not a real descriptor (a test's StringIO): nothing is flushed at exit


def write_stdout(text: str) -> None:
    """Write ``text`` to stdout and flush it; see the module docstring for failures."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        _stdout_to_devnull()
    except OSError as exc:
        _stdout_to_devnull()
        raise OutputTargetError(f"cannot write to stdout: {exc.strerror or exc}") from None


def write_text(path: str, text: str, *, flag: str = "-o") -> None:
    """Write ``text`` (UTF-8) to ``path`` with the semantics in the module docstring."""
    real, in_place = check_target(path, flag=flag)
    data = text.encode("utf-8", "surrogateescape")
    if in_place:
        try:
            with open(real, "wb", buffering=0) as fh:
                view = memoryview(data)
                while view:
                    view = view[fh.write(view) or 0:]
        except OSError as exc:
            raise _refuse(path, exc.strerror or str(exc), flag) from None
        return
    folder = os.path.dirname(real) or "."
    try:
        mode = stat.S_IMODE(os.stat(real).st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    import tempfile  # here: most runs write no report file, and tempfile costs start-up

    try:
        fd, tmp = tempfile.mkstemp(prefix=".safehub-report-", dir=folder)
    except OSError as exc:
        raise _refuse(path, exc.strerror or str(exc), flag) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
        os.replace(tmp, real)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise _refuse(path, exc.strerror or str(exc), flag) from None
    except BaseException:  # Ctrl-C included: no partial or temporary file is left
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
