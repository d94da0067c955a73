"""Landlock (Linux 5.13+) through raw system calls: filesystem, TCP and scope rules.

A ruleset handles every access right the running kernel knows, so whatever is not
granted by a rule is denied: read-only trees, read-write trees, no execute, no TCP
bind or connect (no port rules at all), and from ABI 6 no signals to processes
outside the sandbox and no abstract Unix sockets. Landlock restricts the calling
thread only (ABI <= 7), so it must be applied in a single-threaded process.

What Landlock ABI 7 does not mediate (UDP, path-named Unix sockets via an already
open socket, ioctl on non-device files, fchmod) is left to seccomp.
"""

from __future__ import annotations

import ctypes
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass

from safehub._sandbox.linux import syscall

__all__ = ["LandlockApplied", "abi_version", "restrict"]

# The Landlock calls have the same numbers on every architecture (asm-generic table).
_SYS_CREATE_RULESET = 444
_SYS_ADD_RULE = 445
_SYS_RESTRICT_SELF = 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1

FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
FS_IOCTL_DEV = 1 << 15  # ABI 5
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6

# Rights that make sense on a file (anything else on a non-directory is EINVAL).
_FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
READ_ONLY = FS_READ_FILE | FS_READ_DIR
# The private temporary folder: everything but execute, devices and sockets.
READ_WRITE = (FS_WRITE_FILE | FS_READ_FILE | FS_READ_DIR | FS_REMOVE_DIR | FS_REMOVE_FILE
              | FS_MAKE_DIR | FS_MAKE_REG | FS_MAKE_FIFO | FS_MAKE_SYM | FS_REFER
              | FS_TRUNCATE)
# Character devices such as /dev/null: read, write, truncate (open(..., "w")), no ioctl.
DEVICE_RW = FS_READ_FILE | FS_WRITE_FILE | FS_TRUNCATE


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64),
                ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


@dataclass(frozen=True)
class LandlockApplied:
    """What a successful :func:`restrict` enforced."""

    abi: int
    tcp_blocked: bool
    scoped: bool
    skipped_paths: tuple[str, ...]


def abi_version() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is absent or disabled."""
    try:
        return syscall(_SYS_CREATE_RULESET, 0, 0, _CREATE_RULESET_VERSION)
    except OSError:
        return 0


def _handled_fs(abi: int) -> int:
    rights = (1 << 13) - 1
    if abi >= 2:
        rights |= FS_REFER
    if abi >= 3:
        rights |= FS_TRUNCATE
    if abi >= 5:
        rights |= FS_IOCTL_DEV
    return rights


def restrict(read_only: Iterable[str], read_write: Iterable[str],
             devices: Iterable[str] = ()) -> LandlockApplied:
    """Confine the calling thread (and its future children) for good.

    Paths that do not exist or cannot be reached are skipped (and reported); any other
    failure raises
    ``OSError``. no_new_privs must already be set (or the caller hold CAP_SYS_ADMIN).
    """
    abi = abi_version()
    if abi < 1:
        raise OSError(38, "Landlock is not supported or not enabled by this kernel")
    handled = _handled_fs(abi)
    attr = _RulesetAttr(handled, (NET_BIND_TCP | NET_CONNECT_TCP) if abi >= 4 else 0,
                        (SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL) if abi >= 6 else 0)
    ruleset = syscall(_SYS_CREATE_RULESET, ctypes.addressof(attr), ctypes.sizeof(attr), 0)
    skipped: list[str] = []
    try:
        for paths, rights in ((read_only, READ_ONLY), (read_write, READ_WRITE),
                              (devices, DEVICE_RW)):
            for path in paths:
                try:
                    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                except (FileNotFoundError, PermissionError):
                    skipped.append(path)  # unreachable anyway: nothing to grant
                    continue
                try:
                    allowed = rights & handled
                    if not stat.S_ISDIR(os.fstat(fd).st_mode):
                        allowed &= _FILE_RIGHTS
                    rule = _PathBeneathAttr(allowed, fd)
                    syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH,
                            ctypes.addressof(rule), 0)
                finally:
                    os.close(fd)
        syscall(_SYS_RESTRICT_SELF, ruleset, 0)
    finally:
        os.close(ruleset)
    return LandlockApplied(abi=abi, tcp_blocked=abi >= 4, scoped=abi >= 6,
                           skipped_paths=tuple(skipped))
