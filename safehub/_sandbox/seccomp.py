"""A seccomp filter built with libseccomp through ctypes.

libseccomp (a C library present on most distributions) turns syscall names into
numbers for the running architecture, adds the architecture check, and rejects the
x32 and foreign-ABI entry points that a hand-written BPF filter easily forgets.

The filter allows by default and denies, with EPERM, what repository code never
needs and sandbox escapes use: starting programs, new sockets, ptrace and other
processes' memory, namespaces and mounts, io_uring and Linux AIO (whose contexts come
from one pool for the whole host), the kernel keyring, System V
IPC and POSIX message queues (host-wide without an IPC namespace), bpf,
perf, userfaultfd, memory files (``memfd_create``: pages written to one are counted by
no rlimit, so 256 of them held the host's memory past ``memory_mb``), inotify and
fanotify watches (Landlock does not mediate them: a watch on a folder Landlock hides
names each file created there), leaving the
process group (setsid, setpgid, which would escape the kill of the whole tree), making
itself dumpable again, terminal input injection, and setting another process's
resource limits, priorities or scheduling
(prlimit, setpriority, ioprio_set, sched_set* for anything but the caller itself). ``clone`` with
namespace flags is denied; ``clone3`` answers ENOSYS so that glibc falls back to
``clone``, whose flags the filter can inspect.

Changing a file's mode, owner, times or extended attributes (ACLs included) is never
done either: Landlock does not mediate these calls, and they work by path on any file
the sandbox's uid owns, readable or not (``chmod ~/.ssh/authorized_keys 0666`` from a
hubconf, when the sandbox runs as the user), and through any descriptor it holds. They
are not refused but *ignored* (:data:`IGNORED_SYSCALLS`): the filter answers success
(``SECCOMP_RET_ERRNO`` with errno 0 returns 0 without running the call) and nothing
changes. torch.hub code copies files with ``shutil.copy``/``copy2``/``copytree`` and
extracts archives with ``tarfile``, which set modes and times on what they write and
raise on EPERM; a file the sandbox writes in its private folder then keeps the mode it
was created with. A seccomp filter cannot tell the child's own files from the user's
(it sees no paths), so making these calls work for real on the private folder would
mean a supervisor resolving paths (seccomp user notification) with its own races.

System calls newer than the installed libseccomp are added by number
(:data:`_GENERIC_NUMBERS`: since Linux 5.1 every architecture but alpha, ia64 and
mips numbers new calls alike); a name the library cannot resolve is otherwise
reported as unknown.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import platform
from dataclasses import dataclass

__all__ = ["DENIED_SYSCALLS", "IGNORED_SYSCALLS", "SeccompApplied", "apply_filter",
           "library"]

_ACT_ALLOW = 0x7FFF0000
_CMP_EQ = 4
_CMP_MASKED_EQ = 7


def _act_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


# Each denied call, grouped by what it would let the code do.
DENIED_SYSCALLS: dict[str, tuple[str, ...]] = {
    "run programs": ("execve", "execveat", "uselib"),
    "open network or local sockets": ("socket", "socketpair", "connect", "bind", "listen",
                                      "accept", "accept4"),
    "inspect or control other processes": ("ptrace", "process_vm_readv", "process_vm_writev",
                                           "pidfd_getfd", "kcmp"),
    "change namespaces or mounts": ("unshare", "setns", "mount", "umount2", "pivot_root",
                                    "chroot", "open_tree", "open_tree_attr", "move_mount",
                                    "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr"),
    "use io_uring": ("io_uring_setup", "io_uring_enter", "io_uring_register"),
    # Linux AIO contexts come from one pool for the whole host (fs.aio-max-nr): a child
    # that took it all made every other program's io_setup fail while it ran.
    "use the host's asynchronous I/O contexts": ("io_setup", "io_destroy", "io_submit",
                                                 "io_cancel", "io_getevents",
                                                 "io_pgetevents"),
    "use the kernel keyring": ("keyctl", "add_key", "request_key"),
    # Without an IPC namespace (hosts that refuse user namespaces) these reach the host's
    # objects: the user's shared memory and queues, and segments that outlive the sandbox.
    "use System V or POSIX message IPC": (
        "shmget", "shmat", "shmctl", "shmdt", "semget", "semop", "semtimedop", "semctl",
        "msgget", "msgsnd", "msgrcv", "msgctl", "ipc", "mq_open", "mq_unlink",
        "mq_timedsend", "mq_timedreceive", "mq_notify", "mq_getsetattr"),
    "load kernel programs or profile": ("bpf", "perf_event_open", "userfaultfd"),
    # Memory files hold memory that no address-space limit counts (written, never
    # mapped), one per descriptor: the result's memfd comes from the parent instead.
    "hold memory outside the address-space limit": ("memfd_create", "memfd_secret"),
    "leave the process group": ("setsid", "setpgid"),
    "open files by handle": ("open_by_handle_at", "name_to_handle_at"),
    # Landlock does not mediate watches: one on a folder it hides (the user's home, /tmp)
    # reported the name of every file created there while the sandbox ran.
    "watch files and folders": ("inotify_init", "inotify_init1", "inotify_add_watch",
                                "fanotify_init", "fanotify_mark"),
    "administer the machine": ("kexec_load", "kexec_file_load", "init_module", "finit_module",
                               "delete_module", "reboot", "swapon", "swapoff", "acct",
                               "quotactl", "syslog", "iopl", "ioperm", "modify_ldt", "vhangup",
                               "lookup_dcookie"),
}

# Each call that answers success without running, grouped by what it would change.
IGNORED_SYSCALLS: dict[str, tuple[str, ...]] = {
    "a file's mode, owner, times or attributes": (
        "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown", "fchownat",
        "utime", "utimes", "futimesat", "utimensat", "setxattr", "lsetxattr", "fsetxattr",
        "setxattrat", "removexattr", "lremovexattr", "fremovexattr", "removexattrat",
        "file_setattr"),
}

# Calls that libseccomp releases older than the kernel may not know by name: their numbers
# in the table shared by every architecture since Linux 5.1 (asm-generic, x86, arm, ...).
_GENERIC_NUMBERS = {"fchmodat2": 452, "setxattrat": 463, "removexattrat": 466,
                    "open_tree_attr": 467, "file_setattr": 469}
_GENERIC_TABLE_MACHINES = frozenset({"x86_64", "aarch64", "arm64", "riscv64", "ppc64le",
                                     "ppc64", "s390x", "loongarch64", "armv7l", "i686"})

_NS_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000,
             0x40000000)  # CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET
_CMP_NE = 1
_PR_SET_DUMPABLE = 4
_PRIO_PROCESS = 0
_IOPRIO_WHO_PROCESS = 1
_TIOCSTI = 0x5412
_TIOCLINUX = 0x541C


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


@dataclass(frozen=True)
class SeccompApplied:
    """What a successful :func:`apply_filter` installed."""

    denied: tuple[str, ...]
    ignored: tuple[str, ...]  # answer success and change nothing
    unknown: tuple[str, ...]  # names this architecture does not have


_lib: ctypes.CDLL | None = None
_lib_error = ""


def library() -> ctypes.CDLL | None:
    """libseccomp, loaded once (the zygote loads it before forking); None if absent."""
    global _lib, _lib_error
    if _lib is None and not _lib_error:
        name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
        try:
            lib = ctypes.CDLL(name, use_errno=True)
        except OSError as exc:
            _lib_error = f"libseccomp could not be loaded ({exc}); install libseccomp2"
            return None
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_rule_add_array.restype = ctypes.c_int
        lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                               ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
        lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_load.restype = ctypes.c_int
        lib.seccomp_load.argtypes = [ctypes.c_void_p]
        lib.seccomp_release.argtypes = [ctypes.c_void_p]
        _lib = lib
    return _lib


def apply_filter() -> SeccompApplied:
    """Install the filter on the calling thread; raises OSError on failure."""
    lib = library()
    if lib is None:
        raise OSError(errno.ENOSYS, _lib_error)
    ctx = lib.seccomp_init(_ACT_ALLOW)
    if not ctx:
        raise OSError(errno.ENOMEM, "seccomp_init failed")
    denied: list[str] = []
    ignored: list[str] = []
    unknown: list[str] = []

    def add(name: str, action: int, *cmps: tuple[int, int, int, int],
            into: list[str] = denied) -> None:
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0 and name in _GENERIC_NUMBERS and \
                platform.machine() in _GENERIC_TABLE_MACHINES:
            nr = _GENERIC_NUMBERS[name]
        if nr < 0:
            unknown.append(name)
            return
        array = (_ArgCmp * max(1, len(cmps)))(*(_ArgCmp(*c) for c in cmps))
        rc = lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), array)
        if rc < 0:
            raise OSError(-rc, f"seccomp rule for {name}: {errno.errorcode.get(-rc, rc)}")
        into.append(name)

    try:
        eperm = _act_errno(errno.EPERM)
        for names in DENIED_SYSCALLS.values():
            for name in names:
                add(name, eperm)
        for names in IGNORED_SYSCALLS.values():
            for name in names:
                add(name, _act_errno(0), into=ignored)
        for flag in _NS_FLAGS:
            add("clone", eperm, (0, _CMP_MASKED_EQ, flag, flag))
        add("clone3", _act_errno(errno.ENOSYS))
        add("prctl", eperm, (0, _CMP_EQ, _PR_SET_DUMPABLE, 0))
        # Resource controls of other processes are not scoped by Landlock: without a PID
        # namespace they reach the parent (its pid is the channel's peer) and every
        # process of the uid. The calling process's own stay allowed.
        for call in ("prlimit64", "sched_setaffinity", "sched_setscheduler", "sched_setparam",
                     "sched_setattr"):
            add(call, eperm, (0, _CMP_NE, 0, 0))
        for call, who in (("setpriority", _PRIO_PROCESS), ("ioprio_set", _IOPRIO_WHO_PROCESS)):
            add(call, eperm, (0, _CMP_NE, who, 0))
            add(call, eperm, (1, _CMP_NE, 0, 0))
        for request in (_TIOCSTI, _TIOCLINUX):
            add("ioctl", eperm, (1, _CMP_MASKED_EQ, 0xFFFFFFFF, request))
        rc = lib.seccomp_load(ctx)
        if rc < 0:
            raise OSError(-rc, f"seccomp_load: {errno.errorcode.get(-rc, rc)}")
    finally:
        lib.seccomp_release(ctx)
    return SeccompApplied(denied=tuple(sorted(set(denied))), ignored=tuple(sorted(ignored)),
                          unknown=tuple(unknown))
