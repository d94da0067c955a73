"""ctypes bindings for the Linux calls Python's ``os`` module lacks (3.10+).

Every wrapper raises ``OSError`` with the errno on failure, like ``os`` does.
"""

from __future__ import annotations

import contextlib
import ctypes
import os

__all__ = [
    "AT_RECURSIVE",
    "CLONE_NEWIPC",
    "CLONE_NEWNET",
    "CLONE_NEWNS",
    "CLONE_NEWPID",
    "CLONE_NEWUSER",
    "MS_NODEV",
    "MS_NOEXEC",
    "MS_NOSUID",
    "MS_PRIVATE",
    "MS_REC",
    "PR_GET_DUMPABLE",
    "PR_GET_NO_NEW_PRIVS",
    "PR_SET_DUMPABLE",
    "PR_SET_NO_NEW_PRIVS",
    "PR_SET_PDEATHSIG",
    "drop_capabilities",
    "libc",
    "mount",
    "move_mount",
    "open_tree",
    "prctl",
    "syscall",
    "unshare",
]

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REC = 0x4000
MS_PRIVATE = 1 << 18

PR_SET_PDEATHSIG = 1
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

# The "new" mount API has the same numbers on every architecture (asm-generic table).
_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
OPEN_TREE_CLONE = 1
AT_RECURSIVE = 0x8000
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_AT_FDCWD = -100

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                       ctypes.c_ulong]
libc.prctl.restype = ctypes.c_int
libc.unshare.argtypes = [ctypes.c_int]
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                       ctypes.c_char_p]


def _fail(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def syscall(number: int, *args: int | ctypes.c_void_p | ctypes.c_char_p) -> int:
    """A raw system call; returns its result or raises OSError."""
    converted = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    ret = int(libc.syscall(ctypes.c_long(number), *converted))
    if ret == -1:
        raise _fail(f"syscall {number}")
    return ret


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """prctl(2)."""
    ret = int(libc.prctl(option, arg2, arg3, arg4, arg5))
    if ret == -1:
        raise _fail(f"prctl({option})")
    return ret


def unshare(flags: int) -> None:
    """unshare(2): move the calling process into new namespaces."""
    if libc.unshare(flags) == -1:
        raise _fail("unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int,
          data: str | None = None) -> None:
    """mount(2)."""
    def enc(s: str | None) -> bytes | None:
        return None if s is None else os.fsencode(s)

    if libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) == -1:
        raise _fail(f"mount {target}")


def open_tree(path: str, flags: int) -> int:
    """open_tree(2): a detached copy of the mount at ``path`` (with OPEN_TREE_CLONE)."""
    return syscall(_SYS_OPEN_TREE, _AT_FDCWD, ctypes.c_char_p(os.fsencode(path)),
                   flags | os.O_CLOEXEC)


def move_mount(tree_fd: int, target: str) -> None:
    """move_mount(2): attach a detached tree at ``target``."""
    syscall(_SYS_MOVE_MOUNT, tree_fd, ctypes.c_char_p(b""), _AT_FDCWD,
            ctypes.c_char_p(os.fsencode(target)), _MOVE_MOUNT_F_EMPTY_PATH)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap", "rb") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return 63


def drop_capabilities() -> None:
    """Empty the bounding, ambient, effective, permitted and inheritable sets."""
    with contextlib.suppress(OSError):  # kernels before 4.3 have no ambient set
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    for cap in range(_last_cap() + 1):
        try:
            prctl(PR_CAPBSET_DROP, cap)
        except OSError as exc:
            # EPERM: no CAP_SETPCAP here, so the bounding set cannot matter (nothing to gain
            # it back with: exec is blocked and no_new_privs follows). EINVAL: unknown cap.
            if exc.errno not in (1, 22):
                raise
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if libc.capset(ctypes.byref(header), data) == -1:
        raise _fail("capset")
