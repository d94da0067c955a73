"""Applying the isolation layers, in the order that works.

Two processes share the work. The *outer* child (forked by the zygote) closes
descriptors, scrubs the environment, asks for the parent-death signal, leaves the
zygote's session, and when started as root drops to a fresh unprivileged uid
(process limits do not bind root). It then enters the new namespaces, and forks
the *inner* child, which is the init of the new PID namespace: when the inner
child dies, the kernel kills everything it started. The inner child drops
capabilities, sets rlimits, no_new_privs and not-dumpable, Landlock and seccomp,
and only then runs repository code. The outer child just waits for it.

Order matters: ``unshare(CLONE_NEWUSER)`` and Landlock need a single-threaded
process (a forked child always is); the uid must change before the user
namespace is created (so the namespace belongs to the unprivileged uid); changing
credentials clears the parent-death signal, so it is set again after each change.

When root runs the sandbox, paths the unprivileged uid cannot reach (``/root``
mode 0700 holding a pyenv Python, a private temp folder) are made reachable in a
private mount namespace: a tmpfs covers the blocking folder and only the needed
trees are bound back into it, so the rest of it stays hidden.
"""

from __future__ import annotations

import functools
import os
import resource
import select
import signal
import stat
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from safehub._sandbox import landlock, linux, seccomp
from safehub._sandbox.spec import Layer

__all__ = ["CHANNEL_FD", "Setup", "SetupAbort", "confine_call", "python_read_roots"]

CHANNEL_FD = 3
# Fresh uids for sandboxes started by root: this base plus the outer child's pid, so
# each live sandbox has its own uid (process counts are per uid) that owns no files.
_UID_BASE = 0x7F000000
_NAMESPACE_LAYERS = {Layer.NETNS: linux.CLONE_NEWNET, Layer.IPCNS: linux.CLONE_NEWIPC,
                     Layer.PIDNS: linux.CLONE_NEWPID}
_SYSTEM_READ = ("/usr/lib", "/usr/lib64", "/lib", "/lib64", "/etc/ld.so.cache")
_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/urandom", "/dev/random")


class SetupAbort(Exception):
    """A required layer could not be applied: nothing may run."""

    def __init__(self, layer: Layer | None, reason: str):
        super().__init__(f"{layer.value if layer else 'setup'}: {reason}")
        self.layer = layer
        self.reason = reason


@functools.lru_cache(maxsize=1)
def python_read_roots() -> tuple[str, ...]:
    """What the child must read to import Python modules: the installation (prefixes
    and site directories) and, for import paths outside it (an editable checkout),
    only the top-level packages already imported from there.

    Computed once, in the zygote after its imports; forked children inherit it.
    """
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix,
                                              sys.base_exec_prefix)}
    roots = set(prefixes)
    outside: list[str] = []
    for entry in sys.path:
        if not entry or not os.path.isabs(entry) or not os.path.exists(entry):
            continue
        real = os.path.realpath(entry)
        if any(real == p or real.startswith(p + os.sep) for p in prefixes):
            if "site-packages" in real or "dist-packages" in real:
                roots.add(real)  # a site directory may live elsewhere via symlinks
            continue
        if real.endswith((".zip", ".egg")) or "site-packages" in real:
            roots.add(real)
        else:
            outside.append(entry.rstrip(os.sep))
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not isinstance(path, str) or not os.path.isabs(path):
            continue
        for entry in outside:
            if path.startswith(entry + os.sep):
                top = path[len(entry) + 1:].split(os.sep, 1)[0]
                roots.add(os.path.realpath(os.path.join(entry, top)))
    return tuple(_topmost(roots))


def _topmost(paths: Iterable[str]) -> list[str]:
    out: list[str] = []
    for p in sorted(set(paths)):
        if not any(p == q or p.startswith(q.rstrip(os.sep) + os.sep) for q in out):
            out.append(p)
    return out


@dataclass
class Setup:
    """The layers of one child: what is wanted, required, applied and missing."""

    config: dict[str, Any]
    applied: dict[Layer, str] = field(default_factory=dict)
    missing: dict[Layer, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    channel_fd: int = -1

    def __post_init__(self) -> None:
        self.required = {Layer(x) for x in self.config.get("required", [])}
        skipped = {Layer(x) for x in self.config.get("skip", [])}
        self.wanted = set(Layer) - skipped
        self.root = os.geteuid() == 0
        self.uid, self.gid = os.getuid(), os.getgid()
        limits = self.config["limits"]
        self.limits = limits
        self.tmp_dir: str = self.config["tmp_dir"]
        self.grants_dir: str | None = self.config.get("grants_dir")
        self.repo_dir: str | None = self.config.get("repo_dir")
        self.pycache_dir: str | None = self.config.get("pycache_dir")  # read-only bytecode
        # Technical prerequisites win over a skip: they are noted, not silently dropped.
        if self.wanted & {Layer.SECCOMP, Layer.LANDLOCK}:
            self._force(Layer.NONEWPRIVS, "seccomp and Landlock need no_new_privs")
        if not self.root and self.wanted & {Layer.NETNS, Layer.IPCNS, Layer.PIDNS,
                                            Layer.MOUNTNS}:
            self._force(Layer.USERNS, "unprivileged namespaces need a user namespace")
        for layer in set(Layer) - self.wanted:
            self.missing[layer] = "skipped on request (unsafe_skip_layers)"

    def _force(self, layer: Layer, why: str) -> None:
        if layer not in self.wanted:
            self.wanted.add(layer)
            self.missing.pop(layer, None)
            self.notes.append(f"{layer.value} kept although skipped: {why}")

    def ok(self, layer: Layer, detail: str) -> None:
        """Record a layer as applied."""
        self.applied[layer] = detail
        self.missing.pop(layer, None)

    def fail(self, layer: Layer, reason: str) -> None:
        """Record a layer as missing; abort when it is required."""
        self.missing[layer] = reason
        if layer in self.required:
            raise SetupAbort(layer, reason)

    # --- outer child ----------------------------------------------------------------------

    def outer(self, channel_fd: int, zygote_pid: int) -> None:
        """Layers up to the namespaces, in the outer child (``channel_fd`` may move)."""
        self.channel_fd = channel_fd
        if Layer.FDS in self.wanted:
            self.channel_fd = _close_fds(channel_fd)
            self.ok(Layer.FDS, "only the channel is open; stdio is /dev/null")
        if Layer.ENV in self.wanted:
            self.ok(Layer.ENV, _scrub_env(self.tmp_dir, self.limits))
        if Layer.PDEATHSIG in self.wanted:
            self._parent_death(zygote_pid)
            self.ok(Layer.PDEATHSIG, "SIGKILL when the zygote dies")
        os.setsid()  # our own process group: the zygote kills it whole (setsid is then denied)

        sandbox_uid = _UID_BASE + os.getpid() if self.root and Layer.UID in self.wanted else None
        if self.root:
            hidden = sandbox_uid is not None and _unreachable(self._needed_paths(), sandbox_uid)
            if hidden:
                self._force(Layer.MOUNTNS, "the unprivileged uid must reach the Python files")
            if Layer.MOUNTNS in self.wanted:
                self._root_mounts(sandbox_uid)
            if Layer.USERNS not in self.wanted:
                # Without a user namespace, root creates them with its own privilege.
                self._unshare_root_namespaces()
            if sandbox_uid is not None:
                if hidden and Layer.MOUNTNS not in self.applied:
                    self.fail(Layer.UID, "the Python installation is not reachable for an "
                                         "unprivileged uid without a mount namespace")
                else:
                    self._drop_uid(sandbox_uid, zygote_pid)
        elif Layer.UID in self.wanted:
            self.ok(Layer.UID, f"not root (uid {self.uid})")
        if Layer.USERNS in self.wanted:
            self._user_namespace(zygote_pid)
        else:
            for layer in (Layer.NETNS, Layer.IPCNS, Layer.PIDNS, Layer.MOUNTNS):
                if layer in self.wanted and layer not in self.applied:
                    self.fail(layer, "needs the user namespace layer")

    def _parent_death(self, zygote_pid: int) -> None:
        linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != zygote_pid:  # the zygote died before the signal was armed
            os._exit(75)

    def _needed_paths(self) -> list[str]:
        paths = [*python_read_roots(), self.tmp_dir]
        paths += [p for p in (self.repo_dir, self.grants_dir, self.pycache_dir) if p]
        return [os.path.realpath(p) for p in paths if os.path.exists(p)]

    def _root_mounts(self, sandbox_uid: int | None) -> None:
        try:
            linux.unshare(linux.CLONE_NEWNS)
            # Before anything is mounted: nothing may propagate back to the host.
            linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
        except OSError as exc:
            self.fail(Layer.MOUNTNS, f"cannot create a private mount namespace ({exc})")
            return
        hidden = []
        if sandbox_uid is not None:
            try:
                hidden = _expose(self._needed_paths(), sandbox_uid)
            except OSError as exc:
                self.fail(Layer.MOUNTNS, f"cannot make the Python files reachable ({exc})")
                return
        owner = sandbox_uid if sandbox_uid is not None else 0
        try:
            detail = self._tmpfs(owner, owner)
        except OSError as exc:
            self.fail(Layer.MOUNTNS, f"cannot mount the private temp folder ({exc})")
            return
        if hidden:
            detail += "; hidden: " + ", ".join(hidden)
        self.ok(Layer.MOUNTNS, detail)

    def _tmpfs(self, uid: int, gid: int) -> str:
        size = self.limits["max_file_mb"]
        linux.mount("tmpfs", self.tmp_dir, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV,
                    f"size={size}m,nr_inodes=65536,mode=0700,uid={uid},gid={gid}")
        return f"temp folder is a {size} MiB tmpfs"

    def _unshare_root_namespaces(self) -> None:
        for layer, flag in _NAMESPACE_LAYERS.items():
            if layer in self.wanted:
                try:
                    linux.unshare(flag)
                    self.ok(layer, "created by root, owned by the initial user namespace")
                except OSError as exc:
                    self.fail(layer, f"unshare failed ({exc})")

    def _drop_uid(self, uid: int, zygote_pid: int) -> None:
        try:
            if Layer.MOUNTNS not in self.applied:
                os.chown(self.tmp_dir, uid, uid)
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        except OSError as exc:
            self.fail(Layer.UID, f"cannot switch to uid {uid} ({exc})")
            return
        self.uid = self.gid = uid
        # A uid change makes the process non-dumpable (so /proc/self/uid_map would be
        # root's) and clears the parent-death signal: restore both.
        linux.prctl(linux.PR_SET_DUMPABLE, 1)
        if Layer.PDEATHSIG in self.applied:
            self._parent_death(zygote_pid)
        self.ok(Layer.UID, f"root dropped to uid {uid}, no groups, no capabilities")

    def _user_namespace(self, zygote_pid: int) -> None:
        # The other namespaces are created together with the user namespace, so that it
        # owns them: the inner child can then mount a /proc of its own PID namespace.
        flags = linux.CLONE_NEWUSER
        extra = [layer for layer in _NAMESPACE_LAYERS
                 if layer in self.wanted and layer not in self.applied]
        for layer in extra:
            flags |= _NAMESPACE_LAYERS[layer]
        mount_here = not self.root and Layer.MOUNTNS in self.wanted
        if mount_here or Layer.MOUNTNS in self.applied:
            flags |= linux.CLONE_NEWNS  # as root: a copy of root's mounts, owned by the user ns
        try:
            linux.unshare(flags)
            _write("/proc/self/setgroups", "deny")
            _write("/proc/self/uid_map", f"{self.uid} {self.uid} 1")
            _write("/proc/self/gid_map", f"{self.gid} {self.gid} 1")
        except OSError as exc:
            reason = f"the kernel refused a user namespace ({exc})"
            self.fail(Layer.USERNS, reason)
            for layer in [*extra, *([Layer.MOUNTNS] if mount_here else [])]:
                self.fail(layer, reason)
            return
        self.ok(Layer.USERNS, f"uid {self.uid} mapped to itself, setgroups denied")
        for layer in extra:
            self.ok(layer, "unprivileged, inside the user namespace")
        if mount_here:
            try:
                linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
                self.ok(Layer.MOUNTNS, self._tmpfs(self.uid, self.gid))
            except OSError as exc:
                self.fail(Layer.MOUNTNS, f"cannot mount the private temp folder ({exc})")
        if Layer.PDEATHSIG in self.applied:
            self._parent_death(zygote_pid)

    # --- inner child ----------------------------------------------------------------------

    def inner(self, outer_alive_fd: int) -> None:
        """The remaining layers, in the inner child (init of the PID namespace)."""
        if Layer.PDEATHSIG in self.applied:
            linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
            # getppid() is 0 across a PID namespace: the outer child's death shows as
            # end-of-file on a pipe whose other end only it holds.
            if select.select([outer_alive_fd], [], [], 0)[0]:
                os._exit(75)
        os.close(outer_alive_fd)
        if Layer.PIDNS in self.applied:
            self.applied[Layer.PIDNS] += "; " + self._own_proc()
        if Layer.CAPS in self.wanted:
            try:
                linux.drop_capabilities()
                self.ok(Layer.CAPS, "bounding, ambient, effective and permitted sets empty")
            except OSError as exc:
                self.fail(Layer.CAPS, str(exc))
        if Layer.RLIMITS in self.wanted:
            try:
                self.ok(Layer.RLIMITS, _set_rlimits(self.limits))
            except (OSError, ValueError) as exc:
                self.fail(Layer.RLIMITS, str(exc))
        if Layer.NONEWPRIVS in self.wanted:
            try:
                linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
                linux.prctl(linux.PR_SET_DUMPABLE, 0)
                self.ok(Layer.NONEWPRIVS, "no_new_privs set; not dumpable")
            except OSError as exc:
                self.fail(Layer.NONEWPRIVS, str(exc))
        if Layer.LANDLOCK in self.wanted:
            self._landlock()
        if Layer.SECCOMP in self.wanted:
            if Layer.NONEWPRIVS not in self.applied and os.geteuid() != 0:
                self.fail(Layer.SECCOMP, "needs no_new_privs, which is missing")
            else:
                try:
                    applied = seccomp.apply_filter()
                    self.ok(Layer.SECCOMP, f"{len(applied.denied)} system calls denied, "
                                           f"{len(applied.ignored)} ignored")
                except OSError as exc:
                    self.fail(Layer.SECCOMP, str(exc))

    def _own_proc(self) -> str:
        # The host's /proc would still list (and describe) every process of the machine.
        if Layer.MOUNTNS not in self.applied:
            return "no mount namespace: the host's /proc stays visible"
        try:
            linux.mount("proc", "/proc", "proc",
                        linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC)
        except OSError as exc:
            return f"the host's /proc stays visible ({exc})"
        return "/proc shows only the sandbox's processes"

    def _landlock(self) -> None:
        abi = landlock.abi_version()
        if abi < 1:
            self.fail(Layer.LANDLOCK, "Landlock is not supported or not enabled by the kernel "
                                      "(needs Linux 5.13+ with lsm=landlock)")
            return
        read_only = [*python_read_roots(), *_SYSTEM_READ]
        read_only += [p for p in (self.repo_dir, self.grants_dir, self.pycache_dir) if p]
        try:
            done = landlock.restrict(read_only, [self.tmp_dir], _DEVICES)
        except OSError as exc:
            self.fail(Layer.LANDLOCK, str(exc))
            return
        notes = [f"ABI {done.abi}"]
        notes.append("TCP bind/connect denied" if done.tcp_blocked
                     else "TCP not mediated (ABI < 4)")
        notes.append("signals and abstract sockets scoped" if done.scoped
                     else "signals not scoped (ABI < 6)")
        self.ok(Layer.LANDLOCK, ", ".join(notes))


def confine_call(config: dict[str, Any], folder: str) -> None:
    """A warm child's call (its grandchild): a second Landlock layer under which the
    sandbox's temporary folder is read-only but for ``folder``, the call's own; what the
    first import left there is read, never changed, by later calls."""
    read_only = [*python_read_roots(), *_SYSTEM_READ, config["tmp_dir"]]
    read_only += [p for p in (config.get("repo_dir"), config.get("grants_dir"),
                              config.get("pycache_dir")) if p]
    landlock.restrict(read_only, [folder], _DEVICES)


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _close_fds(channel_fd: int) -> int:
    if channel_fd != CHANNEL_FD:
        os.dup2(channel_fd, CHANNEL_FD, inheritable=False)
        os.close(channel_fd)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)
    os.closerange(CHANNEL_FD + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    return CHANNEL_FD


def _scrub_env(tmp_dir: str, limits: dict[str, Any]) -> str:
    threads = str(limits.get("threads") or 1)
    clean = {
        "HOME": tmp_dir, "TMPDIR": tmp_dir, "TORCH_HOME": os.path.join(tmp_dir, "torch"),
        "XDG_CACHE_HOME": os.path.join(tmp_dir, ".cache"), "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": threads,
    }
    os.environ.clear()
    os.environ.update(clean)
    tempfile.tempdir = tmp_dir
    return f"clean interpreter; environment reduced to {', '.join(sorted(clean))}"


def _can_search(st: os.stat_result, uid: int) -> bool:
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    return bool(st.st_mode & stat.S_IXOTH)


def _blocking_ancestor(path: str, uid: int) -> str | None:
    """The topmost folder above ``path`` that ``uid`` cannot pass through."""
    current = "/"
    for part in path.strip("/").split("/")[:-1]:
        current = os.path.join(current, part)
        if not _can_search(os.stat(current), uid):
            return current
    return None


def _unreachable(paths: list[str], uid: int) -> bool:
    return any(_blocking_ancestor(p, uid) for p in paths)


def _expose(paths: list[str], uid: int) -> list[str]:
    """Make ``paths`` reachable for ``uid``: cover each blocking folder with a tmpfs
    that holds only bind mounts of the needed trees. Returns the covered folders."""
    groups: dict[str, list[str]] = {}
    for p in _topmost(paths):
        blocker = _blocking_ancestor(p, uid)
        if blocker is not None:
            if blocker == "/":
                raise OSError(13, "the root folder is not searchable")
            groups.setdefault(blocker, []).append(p)
    for blocker, needed in sorted(groups.items()):
        trees = [(p, linux.open_tree(p, linux.OPEN_TREE_CLONE | linux.AT_RECURSIVE))
                 for p in needed]
        try:
            linux.mount("tmpfs", blocker, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV,
                        "size=1m,nr_inodes=4096,mode=0755")
            for p, fd in trees:
                if stat.S_ISDIR(os.fstat(fd).st_mode):
                    os.makedirs(p, mode=0o755, exist_ok=True)
                else:
                    os.makedirs(os.path.dirname(p), mode=0o755, exist_ok=True)
                    os.close(os.open(p, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
                linux.move_mount(fd, p)
        finally:
            for _, fd in trees:
                os.close(fd)
    return sorted(groups)


_MiB = 1 << 20
_SIGNALS_QUEUED = 64


def _set_rlimits(limits: dict[str, Any]) -> str:
    wanted = {
        resource.RLIMIT_AS: (limits["memory_mb"] * _MiB,) * 2,
        resource.RLIMIT_CPU: (limits["cpu_s"], limits["cpu_s"] + 1),
        resource.RLIMIT_NPROC: (limits["max_processes"],) * 2,
        resource.RLIMIT_FSIZE: (limits["max_file_mb"] * _MiB,) * 2,
        resource.RLIMIT_NOFILE: (limits["max_open_files"],) * 2,
        resource.RLIMIT_CORE: (0, 0),
        resource.RLIMIT_MEMLOCK: (0, 0),
        resource.RLIMIT_MSGQUEUE: (0, 0),
        # Queued signals are counted per uid (a POSIX timer reserves one): a non-root
        # caller's sandbox keeps the caller's uid and must not use up its budget.
        resource.RLIMIT_SIGPENDING: (_SIGNALS_QUEUED,) * 2,
    }
    for which, (soft, hard) in wanted.items():
        _, current_hard = resource.getrlimit(which)
        if current_hard != resource.RLIM_INFINITY:
            hard = min(hard, current_hard)
            soft = min(soft, hard)
        resource.setrlimit(which, (soft, hard))
    return (f"address space {limits['memory_mb']} MiB, CPU {limits['cpu_s']} s, "
            f"{limits['max_processes']} processes, files {limits['max_file_mb']} MiB, "
            f"{limits['max_open_files']} descriptors, {_SIGNALS_QUEUED} queued signals, "
            "no core dumps")
