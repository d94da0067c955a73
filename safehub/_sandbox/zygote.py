"""The zygote: a clean, single-threaded interpreter that forks one child per request.

It is started by the parent as ``python -I`` with a minimal environment (so a
forked child holds no secrets in memory: forked memory keeps the parent's
environment strings), imports torch once with one thread (so fork, user
namespaces and Landlock work in the children), and then only forks, reaps and
kills. It never runs repository code itself.

Control protocol (JSON frames on the control socket, see ``channel``):

- parent -> zygote: ``spawn`` {id, config} with the child's channel as the only fd;
  ``kill`` {id}.
- zygote -> parent: ``hello`` {pid, threads}; ``spawned`` {id, pid};
  ``spawn_failed`` {id, reason}; ``exit`` {id, code, cpu_s, max_rss_kb}.

When the control socket closes (the parent died or closed the sandbox), the
zygote kills every child's process group and exits.
"""

from __future__ import annotations

import contextlib
import gc
import os
import selectors
import signal
import sys
from typing import Any

from safehub._sandbox.channel import Channel, ChannelClosed, ProtocolError

__all__ = ["main"]

_THREADS_DIR = "/proc/self/task"


def _threads() -> int:
    try:
        return len(os.listdir(_THREADS_DIR))
    except OSError:
        return 0


def _preload_packages(names: list[str]) -> list[str]:
    """Import installed packages a hubconf declares (chosen by the parent: site-packages
    only, never the repo's own modules). A package that fails to import is skipped: the
    child then imports it itself and reports the error where torch.hub would."""
    import importlib

    failed = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # any failure leaves it to the child
            failed.append(name)
    return failed


def _preload(with_torch: bool) -> None:
    import encodings.idna  # noqa: F401 - socket and urllib use it lazily, on any host name
    if with_torch:
        import torch
        import torch.hub
        import torch.nn
        import torch.utils.model_zoo  # the download stubs patch it

        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
        # The CPU capability (AVX2, AVX512...) is detected once, from /proc and /sys,
        # which Landlock hides from the children: detect it here, or every child falls
        # back to the slow scalar kernels (whose rounding differs from torch.hub's).
        torch.backends.cpu.get_cpu_capability()
        x = torch.ones(64, 64)
        (x @ x).uniform_().sum()
        from safehub._sandbox import dtypes

        dtypes.from_name("F32")
    from safehub._sandbox import child

    child.preload()


def main(control_fd: int, *, preload_torch: bool = True, packages: tuple[str, ...] = ()) -> None:
    """Serve spawn and kill requests on ``control_fd`` until it closes."""
    _preload(preload_torch)
    failed = _preload_packages(list(packages)) if preload_torch else []
    control = Channel.from_fd(control_fd)
    control.send({"t": "hello", "pid": os.getpid(), "threads": _threads(),
                  "preload_failed": failed})
    children: dict[int, tuple[int, int]] = {}  # pidfd -> (request id, pid)
    by_id: dict[int, int] = {}  # request id -> pid
    selector = selectors.DefaultSelector()
    selector.register(control.sock, selectors.EVENT_READ, None)
    try:
        while True:
            for key, _ in selector.select():
                if key.data is None:
                    try:
                        message, fds = control.recv()
                    except (ChannelClosed, ProtocolError, OSError):
                        return
                    _handle(control, message, fds, children, by_id, selector)
                else:
                    _reap(control, key.fd, children, by_id, selector)
    finally:
        for _, pid in children.values():
            _kill_group(pid)
        # Exit at once: finalizing an interpreter that imported torch takes a few hundred
        # milliseconds, which the parent would wait for at its own exit. Nothing is left
        # to flush but stderr.
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(0)


def _handle(control: Channel, message: dict[str, Any], fds: list[int],
            children: dict[int, tuple[int, int]], by_id: dict[int, int],
            selector: selectors.BaseSelector) -> None:
    rid = message.get("id")
    if message["t"] == "kill":
        for fd in fds:
            os.close(fd)
        if isinstance(rid, int) and rid in by_id:
            _kill_group(by_id[rid])
        return
    if message["t"] != "spawn" or len(fds) != 1 or not isinstance(rid, int):
        for fd in fds:
            os.close(fd)
        control.send({"t": "spawn_failed", "id": rid, "reason": "malformed spawn request"})
        return
    threads = _threads()
    if threads != 1:
        os.close(fds[0])
        control.send({"t": "spawn_failed", "id": rid, "reason": (
            f"the zygote has {threads} threads; namespaces and Landlock need exactly one")})
        return
    zygote_pid = os.getpid()
    gc.freeze()  # a child's collections leave the zygote's pages shared (no copy-on-write)
    pid = os.fork()
    if pid == 0:
        from safehub._sandbox.child import run_outer

        run_outer(message["config"], fds[0], zygote_pid)  # never returns
    os.close(fds[0])
    pidfd = os.pidfd_open(pid)
    children[pidfd] = (rid, pid)
    by_id[rid] = pid
    selector.register(pidfd, selectors.EVENT_READ, pid)
    control.send({"t": "spawned", "id": rid, "pid": pid})


def _kill_group(pid: int) -> None:
    # The outer child leads its own process group, and setsid/setpgid are denied to
    # the code inside: the group holds every process of the sandbox.
    for kill in (os.killpg, os.kill):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill(pid, signal.SIGKILL)


def _reap(control: Channel, pidfd: int, children: dict[int, tuple[int, int]],
          by_id: dict[int, int], selector: selectors.BaseSelector) -> None:
    rid, pid = children.pop(pidfd)
    by_id.pop(rid, None)
    selector.unregister(pidfd)
    os.close(pidfd)
    # Leftovers in the group (when there is no PID namespace) die with it. The pid is
    # not reused before it is reaped, so the group id still names this sandbox.
    _kill_group(pid)
    _, status, usage = os.wait4(pid, 0)
    control.send({"t": "exit", "id": rid, "code": os.waitstatus_to_exitcode(status),
                  "cpu_s": usage.ru_utime + usage.ru_stime, "max_rss_kb": usage.ru_maxrss})
