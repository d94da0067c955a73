"""The parent side: start the zygote, run one request, enforce the deadline, serve the
broker, turn what comes back into a result or a precise error.

Everything the child sends after it reported ``ready`` comes from a process that
ran repository code: each frame is checked for type and shape, the result memfd
is validated by :mod:`result` before it is mapped, and a child that breaks the
protocol is killed and reported (SH503), never believed.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import logging
import math
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, astuple, dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeAlias, TypeGuard

from safehub._sandbox import bytecode, shape
from safehub._sandbox.broker import Broker, BrokerService
from safehub._sandbox.channel import Channel, ChannelClosed, ProtocolError
from safehub._sandbox.errors import (
    BadResult,
    ChildCrashed,
    IsolationUnavailable,
    LimitExceeded,
    RepoCodeError,
    SandboxFailure,
    SandboxViolation,
    UnknownEntrypoint,
    clean_text,
)
from safehub._sandbox.sharing import folder_mode
from safehub._sandbox.spec import (
    Layer,
    LayerStatus,
    Operation,
    SandboxLimits,
    SandboxRequest,
    SandboxResult,
)
from safehub._tree import remove_tree, walk
from safehub.errors import InternalError, SafehubError, SandboxError

__all__ = ["Sandbox", "default_sandbox", "probe_layers", "run_sandboxed"]

log = logging.getLogger("safehub")

LayerCheck: TypeAlias = Callable[[dict[Layer, LayerStatus]], None]

_EXIT_WAIT_S = 10.0
_GRACE_S = 1.0
_PROBE_S = 60.0
_MAX_ENTRYPOINTS = 10_000
_MAX_DOC = 1 << 20
_VIOLATION_ERRNOS = {errno.EPERM, errno.EACCES, errno.ENETUNREACH, errno.EAFNOSUPPORT,
                     errno.EROFS, errno.ENOSYS}
_MEMORY_ERRORS = {"MemoryError", "torch.OutOfMemoryError"}
_LIMIT_ERRNOS = {errno.EFBIG: "file size", errno.ENOSPC: "file size",
                 errno.EMFILE: "open files", errno.EAGAIN: "processes"}
_LIMIT_FIELDS = {"timeout": "timeout_s", "memory": "memory_mb", "cpu": "cpu_s",
                 "processes": "max_processes", "file size": "max_file_mb",
                 "open files": "max_open_files"}
_ROOT_CHECK_MAX = 200_000
# Warm children (Sandbox.run's ``reuse``): at most this many per process, least recently
# used closed first; one idle this long is closed at the next call.
_MAX_WARM_CHILDREN = 3
_WARM_IDLE_S = 300.0


_warm_lock = threading.Lock()
_warm_lru: OrderedDict[_Warm, weakref.ref[Sandbox]] = OrderedDict()
_sandboxes: weakref.WeakSet[Sandbox] = weakref.WeakSet()


def _after_fork() -> None:
    # A forked copy of this process owns no zygote and no warm child: their sockets and
    # folders belong to the parent process, which may be using them right now. Each
    # Sandbox forgets them before the copy can run, reuse or close anything through them.
    global _warm_lock
    _warm_lock = threading.Lock()
    _warm_lru.clear()
    for sandbox in list(_sandboxes):
        sandbox._forget_parent()


os.register_at_fork(after_in_child=_after_fork)


def _zygote_env() -> dict[str, str]:
    # Nothing of the caller's environment: no tokens, no cloud credentials. Forked
    # children keep the zygote's environment strings in memory, so it must hold none.
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/nonexistent",
           "TORCH_HOME": "/nonexistent"}
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                 "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
        env[name] = "1"
    if "LD_LIBRARY_PATH" in os.environ:  # a Python or torch built against private libraries
        env["LD_LIBRARY_PATH"] = os.environ["LD_LIBRARY_PATH"]
    return env


class Sandbox:
    """A zygote process and the means to run sandboxed requests through it.

    Use as a context manager (or call :meth:`close`). The zygote starts on first
    use; it imports torch once (about 2 s), after which each request costs tens of
    milliseconds. Requests through one Sandbox run one at a time; use several
    Sandbox objects to run in parallel.
    """

    def __init__(self, *, preload_torch: bool = True, start_timeout_s: float = 120.0,
                 packages: tuple[str, ...] = ()):
        self.preload_torch = preload_torch
        # Installed packages imported once in the zygote (a hubconf's dependencies, chosen
        # by the caller from site-packages only); each child starts with them imported.
        self.packages = tuple(sorted(packages))
        if not all(isinstance(p, str) and p.isidentifier() for p in self.packages):
            raise ValueError(f"packages must be top-level module names: {self.packages!r}")
        self._starter: threading.Thread | None = None
        self._starter_lock = threading.Lock()
        self.start_timeout_s = start_timeout_s
        self._lock = threading.RLock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._control: Channel | None = None
        self._stderr: Any = None
        self._next_id = 0
        self._exits: dict[int, dict[str, Any]] = {}
        self._layers: dict[Layer, LayerStatus] | None = None
        self._owner = os.getpid()
        # Warm children by reuse key, least recently used first (see run's ``reuse``).
        self._warm: OrderedDict[tuple[object, ...], _Warm] = OrderedDict()
        _sandboxes.add(self)

    def _forget_parent(self) -> None:
        """In a forked copy of the process: drop, without closing or killing anything,
        what belongs to the parent process (its zygote, control socket, warm children and
        their folders); the next call starts a zygote of this process's own."""
        self._lock = threading.RLock()  # another thread may have held it at the fork
        self._starter_lock = threading.Lock()
        self._starter = None
        self._proc = self._control = self._stderr = None
        self._warm = OrderedDict()
        self._exits = {}
        self._owner = os.getpid()

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def zygote_pid(self) -> int | None:
        """The zygote's process id while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self) -> None:
        """Start the zygote (no-op while it runs)."""
        with self._lock:
            if self._owner != os.getpid():
                # A fork of the process that started the zygote: that zygote and its
                # socket belong to the parent process; this one starts its own.
                self._proc = self._control = self._stderr = None
                self._warm = OrderedDict()
                self._owner = os.getpid()
            if self.zygote_pid is not None and self._control is not None:
                return
            self._shutdown()
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            root = str(Path(__file__).resolve().parents[2])
            # The zygote runs this very safehub, not another copy earlier on the path (an
            # installed release under a checkout): the child's layers and protocol are
            # those the parent checks. Imported first from its own folder, which then goes
            # to the end of the path so that it shadows nothing else.
            code = (f"import sys; sys.path.insert(0, {root!r}); import safehub; "
                    f"sys.path.remove({root!r}); sys.path.append({root!r}); "
                    "from safehub._sandbox.zygote import main; "
                    f"main({theirs.fileno()}, preload_torch={self.preload_torch!r}, "
                    f"packages={self.packages!r})")
            self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives with the zygote
            try:
                self._proc = subprocess.Popen(
                    [sys.executable, "-I", "-c", code], env=_zygote_env(), cwd="/",
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr,
                    pass_fds=(theirs.fileno(),), start_new_session=True)
            finally:
                theirs.close()
            self._control = Channel(ours)
            try:
                hello, fds = self._control.recv(time.monotonic() + self.start_timeout_s)
            except (TimeoutError, ChannelClosed, ProtocolError) as exc:
                detail = self._stderr_tail()
                self._shutdown()
                raise IsolationUnavailable(
                    "the sandbox could not start its zygote process", layer=None,
                    reason=f"{exc}; {detail}" if detail else str(exc),
                    fix="check that `python -I -c 'import torch, safehub'` works") from None
            for fd in fds:
                os.close(fd)
            if hello.get("t") != "hello":
                self._shutdown()
                raise IsolationUnavailable("the sandbox zygote sent no greeting", layer=None,
                                           reason=repr(hello)[:200])
            if hello.get("threads") != 1 and self.packages:
                # A preloaded package started a thread: fork would copy a process with
                # threads, which namespaces and Landlock refuse. Start without them.
                log.info("sandbox: preloading %s started threads; starting without it",
                         ", ".join(self.packages))
                self._shutdown()
                self.packages = ()
                self.start()

    def start_in_background(self) -> None:
        """Start the zygote in a thread, so its start overlaps the caller's other work;
        the next :meth:`run` (or :meth:`start`) waits for it. Errors surface there."""
        # Not under self._lock: the starting thread holds it until the zygote greets, and a
        # second early start (the API's, then the runner's) must not wait for that.
        with self._starter_lock:
            if self._starter is not None and self._starter.is_alive():
                return
            if self.zygote_pid is not None and self._control is not None:
                return

            def start() -> None:
                try:
                    self.start()
                except SafehubError as exc:  # the next start() tries again and raises
                    log.debug("sandbox: background start failed: %s", exc)

            self._starter = threading.Thread(target=start, name="safehub-zygote-start",
                                             daemon=True)
            self._starter.start()

    def close(self) -> None:
        """Stop the zygote and every child it still has."""
        with self._lock:
            self._shutdown()

    def _shutdown(self) -> None:
        warm = list(self._warm.values())
        self._warm.clear()
        for child in warm:
            _forget(child)
            child.channel.close()
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        self._exits.clear()
        for child in warm:  # the zygote is gone, and with it every child it had
            _remove_tree(child.workdir)

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0, os.SEEK_END)
        size = self._stderr.tell()
        self._stderr.seek(max(0, size - 2000))
        return clean_text(self._stderr.read().decode(errors="replace").strip(), 2000)

    # --- probing ------------------------------------------------------------------------

    def layers(self) -> dict[Layer, LayerStatus]:
        """Which layers a child of this sandbox gets on this machine (probed once per
        process: what the kernel offers does not depend on what a zygote preloaded)."""
        with self._lock:
            if self._layers is None:
                key = self.preload_torch
                if key not in _machine_layers:
                    _machine_layers[key] = self._probe()
                self._layers = _machine_layers[key]
            return dict(self._layers)

    def _probe(self) -> dict[Layer, LayerStatus]:
        run = _Run(self, None, None)
        ready = run.execute_probe()
        status = {layer: LayerStatus(layer, True, detail)
                  for layer, detail in ready["applied"].items()}
        for layer, reason in ready["missing"].items():
            status[layer] = LayerStatus(layer, False, reason)
        return {layer: status.get(layer, LayerStatus(layer, False, "not reported"))
                for layer in Layer}

    # --- running ------------------------------------------------------------------------

    def run(self, request: SandboxRequest, broker: Broker | None = None, *,
            check_layers: LayerCheck | None = None,
            reuse: str | None = None) -> SandboxResult:
        """Run ``request`` in a sandboxed child; raises a SandboxError subclass when it
        cannot run, hits a limit, fails, or returns something that is not tensors.

        ``check_layers`` is called with the layers this very child got (every layer,
        unavailable ones with the reason), after its sandbox is in place and before it
        receives the call: an exception it raises ends the child before any repository
        code runs. (It replaces a separate probe: no extra child, and the layers judged
        are the ones the code runs under.)

        ``reuse`` (None: a fresh child for this call alone) lets calls of one repository
        share a warm child, as torch.hub shares its ``sys.modules``: the child imports
        hubconf.py once and forks one grandchild per call. It must identify everything
        outside the request that decides what the code may do and see: the repository
        content (commit or tree digest) and the policy, fetcher and broker settings. A
        child is reused only when that string, the repository folder's real path, the
        limits, the required and skipped layers and the bytecode folder are all equal.
        """
        with self._lock:
            if reuse is None:
                return _Run(self, request, broker, check_layers).execute()
            self._expire()
            key = _reuse_key(request, reuse)
            warm = self._warm.get(key)
            if warm is not None and self._doubtful(warm):
                self._drop(warm)
                warm = None
            if warm is not None:
                self._warm.move_to_end(key)
            return _WarmRun(self, request, broker, check_layers, key, warm).execute()

    # --- warm children ------------------------------------------------------------------

    def _keep(self, warm: _Warm) -> bool:
        """Keep ``warm`` for later calls if the process-wide bound allows (the least
        recently used children are closed to make room)."""
        self._warm[warm.key] = warm
        self._warm.move_to_end(warm.key)
        _remember(self, warm)
        while len(_warm_lru) > _MAX_WARM_CHILDREN:
            if not _evict_one(self):
                break
        return warm.key in self._warm

    def _control_frame(self, control: Channel, deadline: float) -> dict[str, Any]:
        """The zygote's next frame: its descriptors closed, an exit report kept in
        ``_exits`` for whichever run or warm child it names."""
        message, fds = control.recv(deadline)
        for fd in fds:
            os.close(fd)
        if message.get("t") == "exit" and isinstance(message.get("id"), int):
            self._exits[message["id"]] = message
        return message

    def _drop(self, warm: _Warm) -> None:
        """End a warm child and everything it started; it serves no other call."""
        if self._warm.get(warm.key) is warm:
            del self._warm[warm.key]
        _forget(warm)
        control = self._control
        if control is not None and warm.rid not in self._exits and not warm.ended:
            with contextlib.suppress(ChannelClosed, OSError):
                control.send({"t": "kill", "id": warm.rid})
            deadline = time.monotonic() + _EXIT_WAIT_S
            while warm.rid not in self._exits and time.monotonic() < deadline:
                try:
                    self._control_frame(control, deadline)
                except TimeoutError:
                    break
                except (ChannelClosed, ProtocolError, OSError):
                    self._shutdown()
                    break
        self._exits.pop(warm.rid, None)
        warm.ended = True
        warm.channel.close()
        _remove_tree(warm.workdir)

    def _doubtful(self, warm: _Warm) -> bool:
        """Whether an idle warm child ended or spoke out of turn since its last call (then
        it is not used: the call starts a new one)."""
        control = self._control
        if self.zygote_pid is None or control is None:
            return True
        try:
            while select.select([control.sock], [], [], 0)[0]:
                message, fds = control.recv(time.monotonic() + 1)
                for fd in fds:
                    os.close(fd)
                if message.get("t") == "exit" and isinstance(message.get("id"), int):
                    self._exits[message["id"]] = message
        except (TimeoutError, ChannelClosed, ProtocolError, OSError):
            return True
        if warm.rid in self._exits:
            warm.ended = True
            return True
        if warm.pending:
            # The last call's end, reported after its result went back: every process of
            # that call is gone before the next call is handed over, or the child goes.
            try:
                message, fds = warm.channel.recv(time.monotonic() + _EXIT_WAIT_S)
            except (TimeoutError, ChannelClosed, ProtocolError, OSError):
                return True
            for fd in fds:
                os.close(fd)
            if fds or not _call_done(message, warm.pending):
                return True
            warm.pending = 0
        # Seen by this process in /proc, not told by the sandbox: the warm child is the only
        # process left in its PID namespace (every process there descends from it).
        if warm.outer is None or not _alone(warm.outer):
            return True
        # An idle child sends nothing: a frame or the end of its channel is a reason to go.
        return bool(select.select([warm.channel.sock], [], [], 0)[0])

    def _expire(self) -> None:
        now = time.monotonic()
        for warm in [w for w in self._warm.values() if now - w.used > _WARM_IDLE_S]:
            self._drop(warm)

    def warm_children(self) -> int:
        """How many warm children this sandbox holds (see :meth:`run`'s ``reuse``)."""
        with self._lock:
            return len(self._warm)


class _Run:
    """One request's life: spawn, handshake, broker, result, cleanup."""

    def __init__(self, sandbox: Sandbox, request: SandboxRequest | None, broker: Broker | None,
                 check_layers: LayerCheck | None = None, *, workdir: Path | None = None,
                 grants: str = ""):
        self.sb = sandbox
        self.check_layers = check_layers
        self.request = request
        self.limits = request.limits if request else SandboxLimits()
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="safehub-sandbox-"))
        self.service = BrokerService(broker, self.workdir / "grants" / grants,
                                     max_copy_mb=self.limits.max_file_mb)
        self.channel: Channel | None = None
        self.rid = -1
        self.child_pid: int | None = None  # the outer child, as the zygote reports it
        self.exit: dict[str, Any] | None = None
        # A load's result memfd, made here and sent with the call (the sandbox may not
        # make memory files): the only file the result may come back in.
        self.result_fd: int | None = None
        self.ready: dict[str, Any] | None = None
        self.times: dict[str, float] = {}
        if request is None:
            self.subject = "layer probe"
        else:
            self.subject = str(request.repo_dir) + (
                f":{request.entrypoint}" if request.entrypoint else "")

    # entry points

    def execute_probe(self) -> dict[str, Any]:
        try:
            self._spawn({"op": "probe", "repo_dir": None, "required": [], "skip": []})
            deadline = time.monotonic() + _PROBE_S
            while self.ready is None:
                if time.monotonic() > deadline:
                    self._kill()
                    raise ChildCrashed("the sandbox's layer probe did not answer",
                                       subject=self.subject, fix="run `safehub doctor` again")
                self._step(deadline)
            return self.ready
        finally:
            self._finish()

    def execute(self) -> SandboxResult:
        request = self.request
        if request is None:
            raise InternalError("sandbox run without a request")
        try:
            self._check_request(request)
            self._spawn(self._config(request, request.op.value))
            return self._loop()
        finally:
            self._finish()

    def _config(self, request: SandboxRequest, op: str) -> dict[str, Any]:
        if request.unsafe_skip_layers:
            log.warning("UNSAFE: sandbox layers skipped on request: %s",
                        ", ".join(sorted(x.value for x in request.unsafe_skip_layers)))
        limits = asdict(self.limits)
        limits["threads"] = self.limits.effective_threads
        # The entrypoint and its arguments are not in this config: the zygote reads
        # it, and what the zygote reads stays in memory its later children inherit.
        # They go to the child on its own channel once it is sandboxed (_send_call).
        return {"op": op, "repo_dir": str(request.repo_dir), "limits": limits,
                "pycache_dir": bytecode.compiled(str(request.repo_dir)),
                "required": sorted(x.value for x in request.required_layers),
                "skip": sorted(x.value for x in request.unsafe_skip_layers)}

    # steps

    def _check_request(self, request: SandboxRequest) -> None:
        repo = request.repo_dir
        if not (repo / "hubconf.py").is_file():
            raise SandboxError(f"no hubconf.py in {repo}", subject=str(repo),
                               fix="point at the folder that holds the repo's hubconf.py")
        if os.geteuid() == 0 and Layer.UID not in request.unsafe_skip_layers:
            unreadable = _not_world_readable(repo)
            if unreadable:
                raise SandboxError(
                    "the repo is not readable by the sandbox's unprivileged user "
                    f"(for example {unreadable})", subject=str(repo),
                    fix=f"make it readable: chmod -R a+rX {repo}")

    def _spawn(self, config: dict[str, Any]) -> None:
        self.sb.start()
        control = self.sb._control
        if control is None:
            raise InternalError("sandbox started without a control channel")
        (self.workdir / "tmp").mkdir(mode=0o700)
        (self.workdir / "grants").mkdir(mode=folder_mode())
        os.chmod(self.workdir, folder_mode())  # the sandbox passes through it
        config.setdefault("limits", {**asdict(self.limits), "threads": 1})
        config.update(tmp_dir=str(self.workdir / "tmp"), grants_dir=str(self.workdir / "grants"))
        self.sb._next_id += 1
        self.rid = self.sb._next_id
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.channel = Channel(ours)
        started = time.monotonic()
        try:
            control.send({"t": "spawn", "id": self.rid, "config": config}, [theirs.fileno()])
        except ChannelClosed:
            self._zygote_died()
        finally:
            theirs.close()
        while True:
            try:
                message = self._control_message(started + 30)
            except TimeoutError:
                self._zygote_died()
            if message.get("id") != self.rid:
                continue
            if message["t"] == "spawned":
                pid = message.get("pid")
                self.child_pid = pid if isinstance(pid, int) and not isinstance(pid, bool) \
                    else None
                break
            if message["t"] == "spawn_failed":
                raise IsolationUnavailable("the sandbox could not start a child", layer=None,
                                           reason=clean_text(message.get("reason"), 500),
                                           subject=self.subject)
        self.t_spawned = time.monotonic()
        self.times["spawn_s"] = self.t_spawned - started

    def _control_message(self, deadline: float) -> dict[str, Any]:
        control = self.sb._control
        if control is None:
            self._zygote_died()
        try:
            message = self.sb._control_frame(control, deadline)
        except TimeoutError:
            raise
        except (ChannelClosed, ProtocolError, OSError):
            self._zygote_died()
        if message["t"] == "exit" and message.get("id") == self.rid:
            self.exit = self.sb._exits.pop(self.rid)
        return message

    def _zygote_died(self) -> NoReturn:
        tail = self.sb._stderr_tail()
        self.sb._shutdown()
        raise ChildCrashed("the sandbox's zygote process died", subject=self.subject,
                           details=[tail] if tail else [],
                           fix="run the call again (a new zygote starts)")

    def _deadline(self) -> float:
        return self.t_spawned + self.limits.timeout_s + self.service.elapsed

    def _loop(self) -> SandboxResult:
        result: SandboxResult | None = None
        while result is None:
            if time.monotonic() >= self._deadline():
                self._kill()
                raise self._limit("timeout", f"the sandboxed code ran longer than "
                                  f"{self.limits.timeout_s:g} s; it was killed with every "
                                  "process it started")
            result = self._step(self._deadline())
        return result

    def _step(self, deadline: float) -> SandboxResult | None:
        """Wait for one event (a frame, the child's exit) and act on it."""
        control, channel = self.sb._control, self.channel
        if control is None or channel is None:
            raise InternalError("sandbox step without its channels")
        if self.exit is not None and channel.sock.fileno() < 0:
            raise self._crash()
        watch = [control.sock] + ([channel.sock] if channel.sock.fileno() >= 0 else [])
        remaining = max(0.0, deadline - time.monotonic())
        readable = select.select(watch, [], [], remaining)[0]
        if control.sock in readable:
            self._control_message(time.monotonic() + 5)
        if channel.sock in readable:
            try:
                message, fds = channel.recv(deadline)
            except ChannelClosed:
                channel.close()
                self._await_exit()
                raise self._crash() from None
            except TimeoutError:
                return None
            except ProtocolError as exc:
                self._kill()
                raise self._protocol(str(exc)) from None
            return self._on_frame(message, fds)
        return None

    def _on_frame(self, message: dict[str, Any], fds: list[int]) -> SandboxResult | None:
        kind = message["t"]
        try:
            if self.ready is None:
                if kind == "setup_failed":
                    self._refuse(message)
                if kind != "ready":
                    raise self._protocol(f"'{kind}' before the sandbox was ready")
                self._on_ready(message)
                return None
            if kind in ("fetch", "hub_load"):
                reply, reply_fds = self.service.handle(message)
                try:
                    self._send(reply, reply_fds)
                finally:
                    for fd in reply_fds:
                        os.close(fd)
                return None
            if kind == "result":
                return self._result(message, fds)
            if kind == "error":
                raise self._error(message)
            raise self._protocol(f"unexpected frame '{kind}'")
        except (ChannelClosed, BrokenPipeError):
            return None
        except ValueError as exc:
            raise self._protocol(str(exc)) from None
        finally:
            for fd in fds:
                os.close(fd)

    def _send(self, message: dict[str, Any], fds: list[int] | tuple[int, ...] = ()) -> None:
        # A child that stops reading must not block the parent: the send is bounded
        # by the deadline.
        channel = self.channel
        if channel is None:
            raise self._protocol("no channel to the child")
        channel.sock.settimeout(max(0.1, self._deadline() - time.monotonic()))
        try:
            channel.send(message, fds)
        except TimeoutError:
            raise self._protocol("the child stopped reading its replies") from None
        finally:
            channel.sock.settimeout(None)

    def _send_call(self) -> None:
        request = self.request
        if request is None:
            return
        self._send({"t": "call", "entrypoint": request.entrypoint, "args": list(request.args),
                    "kwargs": dict(request.kwargs), "seed": request.seed,
                    "scripts": request.script_archives}, self._result_file())

    def _result_file(self) -> list[int]:
        """The memfd a load's result is written into, to send with its call."""
        if self.request is None or self.request.op is not Operation.LOAD:
            return []
        from safehub._sandbox.result import new_result_file

        if self.result_fd is None:
            self.result_fd = new_result_file()
        return [self.result_fd]

    def _own_result_file(self, fd: int) -> int:
        """The result file, once ``fd`` (the child's, closed here) is shown to be the
        memfd sent with the call; the caller owns the returned descriptor."""
        own = self.result_fd
        try:
            given, ours = os.fstat(fd), os.fstat(own) if own is not None else None
        finally:
            os.close(fd)
        if own is None or ours is None or (given.st_dev, given.st_ino) != (ours.st_dev,
                                                                          ours.st_ino):
            raise self._protocol("the result is not in the memory file sent with the call")
        self.result_fd = None
        return own

    def _refuse(self, message: dict[str, Any]) -> NoReturn:
        try:
            layer: Layer | None = Layer(message.get("layer"))
        except ValueError:
            layer = None
        reason = clean_text(message.get("reason"), 1000)
        name = layer.value if layer else "setup"
        raise IsolationUnavailable(
            f"required sandbox layer '{name}' is not available here, so nothing was run",
            layer=layer, reason=reason, subject=self.subject,
            fix=(f"run on a host that supports it (see `safehub doctor`), or remove '{name}' "
                 "from policy [sandbox] required_layers"))

    def _on_ready(self, message: dict[str, Any]) -> None:
        applied, missing = message.get("applied"), message.get("missing")
        if not isinstance(applied, dict) or not isinstance(missing, dict):
            raise self._protocol("malformed ready frame")
        message["applied"] = {Layer(k): clean_text(v, 300) for k, v in applied.items()}
        message["missing"] = {Layer(k): clean_text(v, 300) for k, v in missing.items()}
        self.ready = message
        self.t_ready = time.monotonic()
        self.times["setup_s"] = self.t_ready - self.t_spawned
        self._admit(message)

    def _admit(self, message: dict[str, Any]) -> None:
        """Judge the child's layers (``message`` is its checked ready frame), then send
        it the call."""
        required = self.request.required_layers if self.request else frozenset()
        absent = sorted(x.value for x in required - set(message["applied"]))
        if absent:  # the child enforces this itself; checked again here
            self._kill()
            raise IsolationUnavailable(f"required sandbox layers missing: {', '.join(absent)}",
                                       layer=Layer(absent[0]), reason="not applied",
                                       subject=self.subject)
        if self.check_layers is not None:
            got = {layer: LayerStatus(layer, True, detail)
                   for layer, detail in message["applied"].items()}
            got.update((layer, LayerStatus(layer, False, reason))
                       for layer, reason in message["missing"].items())
            try:
                self.check_layers({layer: got.get(layer, LayerStatus(layer, False, "not "
                                                                     "reported"))
                                   for layer in Layer})
            except BaseException:
                self._kill()  # the call was never sent: no repository code ran
                raise
        self._send_call()

    def _result(self, message: dict[str, Any], fds: list[int]) -> SandboxResult:
        request = self.request
        if request is None or self.ready is None:
            raise InternalError("sandbox result before the child was ready")
        if message.get("op") != request.op.value:
            raise self._protocol("result for another operation")
        received = time.monotonic()
        tensors: dict[str, Any] = {}
        file = None
        entrypoints: tuple[str, ...] = ()
        doc: str | None = None
        aliased: tuple[tuple[str, ...], ...] = ()
        result_shape: shape.Node | None = None
        if request.op is Operation.LOAD:
            keys, groups = message.get("keys"), message.get("aliased", [])
            if len(fds) != 1 or not _str_list(keys) or not isinstance(groups, list) or not all(
                    _str_list(g) for g in groups):
                raise self._protocol("malformed load result")
            from safehub._sandbox.result import check_result  # the scanner's header checks

            file = check_result(self._own_result_file(fds.pop()), order=keys)
            if not request.as_file:
                with file:
                    tensors = file.tensors()
                file = None
            try:
                result_shape = shape.parse(message.get("shape"), keys)
            except shape.ShapeError as exc:
                raise self._protocol(f"malformed result manifest: {exc}") from None
            aliased = tuple(tuple(clean_text(k, 200) for k in g) for g in groups[:1000])
        elif request.op is Operation.LIST:
            names = message.get("entrypoints")
            if not _str_list(names) or len(names) > _MAX_ENTRYPOINTS:
                raise self._protocol("malformed list result")
            # torch.hub's entrypoints are hubconf attributes: Python identifiers, nothing
            # else (a name is printed one per line; it must not carry a line of its own).
            bad = [n for n in names if not n.isidentifier()]
            if bad:
                raise self._protocol(f"entrypoint name '{clean_text(bad[0], 200)}' is not "
                                     f"a Python identifier")
            entrypoints = tuple(clean_text(n, 200) for n in names)
        else:
            raw = message.get("doc")
            if raw is not None and not isinstance(raw, str):
                raise self._protocol("malformed help result")
            doc = None if raw is None else clean_text(raw, _MAX_DOC)
        done = time.monotonic()
        self.times["run_s"] = received - self.t_ready
        self.times["receive_s"] = done - received
        usage = _usage(self._settle())
        self.times["total_s"] = time.monotonic() - self.t_spawned + self.times["spawn_s"]
        return SandboxResult(
            op=request.op, tensors=tensors, entrypoints=entrypoints, doc=doc,
            layers_applied=dict(self.ready["applied"]), layers_missing=dict(self.ready["missing"]),
            timings=dict(self.times), usage=usage, aliased=aliased,
            fetched=tuple(self.service.fetched), shape=result_shape, file=file)

    def _settle(self) -> dict[str, Any] | None:
        """After the result: the child's exit (its usage), the tree ended regardless."""
        # The child ends by itself right after sending; give it a moment (its usage is
        # only counted once it is reaped), then the tree goes regardless.
        self._await_exit(_GRACE_S)
        self._kill()
        self._await_exit()
        return self.exit

    # failures

    def _limit(self, limit: str, message: str, details: list[str] | None = None) -> LimitExceeded:
        name = _LIMIT_FIELDS[limit]
        value = getattr(self.limits, name)
        return LimitExceeded(message, limit=limit, value=value, subject=self.subject,
                             details=details or [],
                             fix=(f"if the model legitimately needs more, raise policy "
                                  f"[sandbox] {name} (now {value})"))

    def _protocol(self, what: str) -> BadResult:
        self._kill()
        return BadResult(f"the sandboxed code broke the result protocol: {clean_text(what, 300)}",
                         subject=self.subject,
                         fix="do not use this repository; its code tampered with the sandbox")

    def _error(self, message: dict[str, Any]) -> SafehubError:
        if message.get("kind") == "unknown_entrypoint":
            names = message.get("entrypoints")
            if not _str_list(names):
                return self._protocol("malformed unknown-entrypoint frame")
            wanted = self.request.entrypoint if self.request else None
            return UnknownEntrypoint(clean_text(wanted or "", 200),
                                     [clean_text(n, 200) for n in names[:_MAX_ENTRYPOINTS]],
                                     subject=self.subject)
        if message.get("kind") == "bad_result":
            raw_keys = message.get("keys")
            keys = raw_keys if _str_list(raw_keys) else []
            return BadResult(
                f"the entrypoint's result cannot leave the sandbox: "
                f"{clean_text(message.get('message'), 1500)}",
                keys=[clean_text(k, 200) for k in keys], subject=self.subject,
                fix="use an entrypoint that returns an nn.Module, a dict of tensors, or "
                    "tuples, lists and dicts of those")
        ref = message.get("broker_ref")
        if isinstance(ref, int) and ref in self.service.failures:
            return self.service.failures[ref]  # the broker's own verdict, not the child's story
        exc_type = clean_text(message.get("type"), 200)
        exc_message = clean_text(message.get("message"), 2000)
        tb = clean_text(message.get("traceback") or "", 8000)
        code = message.get("errno")
        code = code if isinstance(code, int) and not isinstance(code, bool) else None
        phase = str(message.get("phase"))
        where = {"import": "importing hubconf.py", "convert": "converting the result"}.get(
            phase, "running the entrypoint")
        text = f"{exc_type}: {exc_message}"
        if (message.get("memory") is True or exc_type in _MEMORY_ERRORS or code == errno.ENOMEM
                or "can't allocate memory" in exc_message):
            return self._limit("memory", f"the sandboxed code ran out of its memory limit "
                               f"({self.limits.memory_mb} MiB of address space) while {where}",
                               [text])
        if code in _LIMIT_ERRNOS and (code != errno.EAGAIN or exc_type == "BlockingIOError"):
            limit = _LIMIT_ERRNOS[code]
            return self._limit(limit, f"the sandboxed code hit its {limit} limit while {where}",
                               [text])
        if code in _VIOLATION_ERRNOS or exc_type == "PermissionError":
            return SandboxViolation(
                f"the repository's code attempted something the sandbox forbids while {where}: "
                f"{text}", exc_type=exc_type, exc_message=exc_message, traceback=tb,
                subject=self.subject,
                fix=("do not use this repository; code that only computes tensors needs no "
                     "files outside its folder, no network and no other programs"))
        return RepoCodeError(f"the repository's code failed while {where}: {text}",
                             exc_type=exc_type, exc_message=exc_message, traceback=tb,
                             subject=self.subject,
                             fix="check the entrypoint name and arguments (see `safehub help`)")

    def _crash(self) -> SandboxFailure:
        info = self.exit or {}
        code = info.get("code")
        cpu = float(info.get("cpu_s") or 0.0)
        details = [f"child CPU time {cpu:.2f} s, peak memory "
                   f"{float(info.get('max_rss_kb') or 0) / 1024:.0f} MiB"]
        if not isinstance(code, int):
            return ChildCrashed("the sandboxed child ended without a result",
                                subject=self.subject, details=details)
        sig = -code if code < 0 else code - 128 if code > 128 else None
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= self.limits.cpu_s - 0.1):
            return self._limit("cpu", f"the sandboxed code used more than "
                               f"{self.limits.cpu_s} s of CPU time and was killed", details)
        if sig == signal.SIGXFSZ:
            return self._limit("file size", "the sandboxed code wrote a file larger than "
                               f"{self.limits.max_file_mb} MiB", details)
        if sig is not None:
            name = signal.Signals(sig).name if sig in signal.Signals.__members__.values() \
                else f"signal {sig}"
            hint = (f"; running out of its memory limit ({self.limits.memory_mb} MiB) can end "
                    "this way" if sig in (signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS,
                                          signal.SIGKILL) else "")
            return ChildCrashed(f"the sandboxed code was killed by {name}{hint}", signal=sig,
                                subject=self.subject, details=details,
                                fix="do not use this repository, or raise the memory limit if "
                                    "the model is large")
        if self.ready is None:
            return ChildCrashed(f"the sandbox failed while setting up (exit {code})",
                                exit_code=code, subject=self.subject, details=details,
                                fix="run `safehub doctor`; report it if it persists")
        return ChildCrashed(f"the sandboxed code exited (code {code}) without a result",
                            exit_code=code, subject=self.subject, details=details,
                            fix="do not use this repository; its code ends the process")

    # cleanup

    def _kill(self) -> None:
        control = self.sb._control
        if self.exit is None and control is not None and self.rid > 0:
            with contextlib.suppress(ChannelClosed, OSError):
                control.send({"t": "kill", "id": self.rid})

    def _await_exit(self, wait_s: float = _EXIT_WAIT_S) -> None:
        deadline = time.monotonic() + wait_s
        if self.rid in self.sb._exits:
            self.exit = self.sb._exits.pop(self.rid)
        while self.exit is None and time.monotonic() < deadline:
            try:
                self._control_message(deadline)
            except TimeoutError:
                break

    def _finish(self) -> None:
        try:
            if self.result_fd is not None:
                os.close(self.result_fd)
                self.result_fd = None
            if self.channel is not None:
                self.channel.close()
            if self.rid > 0 and self.exit is None and self.sb._control is not None:
                self._kill()
                with contextlib.suppress(SafehubError):
                    self._await_exit()
        finally:
            _remove_tree(self.workdir)


@dataclass(eq=False)
class _Warm:
    """A warm child: sandboxed once, hubconf.py imported once, one grandchild per call."""

    key: tuple[object, ...]
    rid: int
    channel: Channel  # the warm child's own channel (ready, warm, call_done; call channels)
    workdir: Path
    ready: dict[str, Any] = field(default_factory=dict)
    calls: int = 0
    used: float = field(default_factory=time.monotonic)
    ended: bool = False
    pending: int = 0  # a call whose call_done is still to be read (before the next call)
    outer: int | None = None  # the outer child's pid (the zygote's child)


class _WarmRun(_Run):
    """One call served by a warm child: the first call of a key creates the child (its
    sandbox as a one-off child's), later calls only hand it a fresh channel.

    The warm child's frames are checked like any child's: it ran repository code (the
    import), so what it reports (``warm``, ``call_done``) decides nothing but whether
    the child is kept, and any doubt ends it. The call's result, broker requests and
    errors travel on the call's own channel, served by this call's own broker.
    """

    def __init__(self, sandbox: Sandbox, request: SandboxRequest, broker: Broker | None,
                 check_layers: LayerCheck | None, key: tuple[object, ...],
                 warm: _Warm | None):
        self.number = warm.calls + 1 if warm is not None else 1
        super().__init__(sandbox, request, broker, check_layers,
                         workdir=warm.workdir if warm is not None else None,
                         grants=f"call-{self.number}")
        self.key = key
        self.warm = warm
        self.wchan: Channel | None = warm.channel if warm is not None else None
        self.reusable: bool | None = True if warm is not None else None
        self.done: dict[str, Any] | None = None
        self.doomed = False  # the warm child ends with this call
        self.kept = False

    def execute(self) -> SandboxResult:
        request = self.request
        if request is None:
            raise InternalError("sandbox run without a request")
        try:
            self._check_request(request)
            if self.warm is None:
                self._spawn(self._config(request, "warm"))
                if self.channel is None:
                    raise InternalError("warm child spawned without a channel")
                self.wchan, self.channel = self.channel, None
                self.warm = _Warm(self.key, self.rid, self.wchan, self.workdir,
                                  outer=self.child_pid)
            else:
                self.rid = self.warm.rid
                self.ready = self.warm.ready
                self.t_spawned = self.t_ready = time.monotonic()
                self.times.update(spawn_s=0.0, setup_s=0.0)
                self._admit(self.ready)
            result = self._loop()
        except SafehubError as exc:
            soft = isinstance(exc, (RepoCodeError, UnknownEntrypoint, BadResult)) or not \
                isinstance(exc, (SandboxError, InternalError))
            if soft and not self.doomed and self.ready is not None:
                self._settle()  # the call failed in its grandchild; the warm child may stay
            else:
                self.doomed = True
            raise
        except BaseException:
            self.doomed = True
            raise
        finally:
            self._finish()
        return result

    # the call's channel

    def _send_call(self) -> None:
        request, warm, wchan = self.request, self.warm, self.wchan
        if request is None or warm is None or wchan is None or self.ready is None:
            raise InternalError("warm call without its child")
        warm.ready = self.ready
        self.service.grants_dir.mkdir(mode=folder_mode())
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.channel = Channel(ours)
        wchan.sock.settimeout(max(0.1, self._deadline() - time.monotonic()))
        try:
            # The first call's seed goes with it: the warm child seeds before it imports
            # hubconf.py, as torch.hub's first call does (later calls seed afresh).
            first = {"seed": request.seed} if self.number == 1 else {}
            wchan.send({"t": "warm_call", "n": self.number, **first}, [theirs.fileno()])
        except TimeoutError:
            raise self._protocol("the warm child stopped reading") from None
        finally:
            wchan.sock.settimeout(None)
            theirs.close()
        warm.calls = self.number
        self._send({"t": "call", "op": request.op.value, "entrypoint": request.entrypoint,
                    "args": list(request.args), "kwargs": dict(request.kwargs),
                    "seed": request.seed, "scripts": request.script_archives},
                   self._result_file())

    # events

    def _step(self, deadline: float) -> SandboxResult | None:
        control, wchan = self.sb._control, self.wchan
        if control is None or wchan is None:
            raise InternalError("sandbox step without its channels")
        call = self.channel if self.channel is not None and self.channel.sock.fileno() >= 0 \
            else None
        if self.exit is not None and call is None:
            raise self._crash()
        watch = [control.sock] + ([wchan.sock] if wchan.sock.fileno() >= 0 else []) + (
            [call.sock] if call is not None else [])
        readable = select.select(watch, [], [], max(0.0, deadline - time.monotonic()))[0]
        if control.sock in readable:
            self._control_message(time.monotonic() + 5)
        if wchan.sock in readable:
            self._warm_frame(deadline)
        if call is not None and call.sock in readable and call.sock.fileno() >= 0:
            try:
                message, fds = call.recv(deadline)
            except ChannelClosed:
                call.close()
                self._wait(lambda: self.done is not None, _EXIT_WAIT_S)
                raise self._crash() from None
            except TimeoutError:
                return None
            except ProtocolError as exc:
                raise self._protocol(str(exc)) from None
            return self._on_frame(message, fds)
        return None

    def _warm_frame(self, deadline: float) -> None:
        wchan = self.wchan
        if wchan is None:
            return
        try:
            message, fds = wchan.recv(deadline)
        except TimeoutError:
            return
        except ChannelClosed:
            wchan.close()  # the warm child ended: a one-off that served its call, or a crash
            if not self.reusable:
                return
            self.doomed = True
            if self.ready is None or self.channel is None:
                self._await_exit()
                raise self._crash() from None
            return
        except ProtocolError as exc:
            raise self._protocol(str(exc)) from None
        if self.ready is None:
            self._on_frame(message, fds)  # ready, or setup_failed
            return
        for fd in fds:
            os.close(fd)
        kind = message["t"]
        if fds:
            raise self._protocol("descriptors from the warm child")
        if kind == "warm" and self.reusable is None and isinstance(message.get("reusable"),
                                                                    bool):
            self.reusable = message["reusable"]
            if not self.reusable:
                log.info("sandbox: %s is served by a one-off child (reuse is not safe here)",
                         self.subject)
        elif (kind == "call_done" and self.done is None and self.reusable
              and message.get("n") == self.number and _exit_code(message) is not None):
            self.done = {"code": message["code"], **_usage_fields(message)}
        else:
            raise self._protocol(f"unexpected frame '{clean_text(kind, 50)}' from the warm "
                                 "child")

    def _wait(self, until: Callable[[], bool], wait_s: float) -> None:
        deadline = time.monotonic() + wait_s
        while not until() and self.exit is None and time.monotonic() < deadline:
            if self.channel is not None and self.channel.sock.fileno() >= 0:
                self.channel.close()  # nothing more is read from this call
            self._step(deadline)

    # endings

    def _settle(self) -> dict[str, Any] | None:
        """After the call's result or error: keep the warm child when it reports the call
        ended (every process of it killed, its folder removed); else end it."""
        with contextlib.suppress(SafehubError):
            self._wait(lambda: self.reusable is not None, _EXIT_WAIT_S)
            # As a one-off child: the call's process ends by itself right after its
            # result, then the warm child kills what it left (call_done). One that runs
            # on (it sent the result itself, or stalls in its exit) is not left running
            # past its call, unbounded by the call's time limit: the warm child goes.
            if self.reusable and not self.doomed and self.exit is None:
                self._wait(lambda: self.done is not None, _GRACE_S)
        ready = self.ready or {}
        if (self.reusable and self.warm is not None and self.exit is None and not self.doomed
                and self.done is not None and self.done["code"] == 0
                and Layer.PIDNS in ready.get("applied", {})
                # Seen here, not told: call_done can be forged by a call's process that
                # holds a copy of the warm channel (made by the import) and runs on.
                and self.warm.outer is not None and _alone(self.warm.outer)):
            self.warm.pending = 0
            self.kept = True
            return self.done
        self.doomed = True
        super()._settle()
        return self.done or self.exit

    def _kill(self) -> None:
        self.doomed = True
        super()._kill()

    def _crash(self) -> SandboxFailure:
        self.doomed = True
        if self.done is None:
            return super()._crash()
        saved, self.exit = self.exit, self.done  # the grandchild's exit, as the warm child says
        try:
            return super()._crash()
        finally:
            self.exit = saved

    def _finish(self) -> None:
        if self.result_fd is not None:
            os.close(self.result_fd)
            self.result_fd = None
        if self.channel is not None:
            self.channel.close()
        warm = self.warm
        if warm is None:  # no child was made
            super()._finish()
            return
        warm.used = time.monotonic()
        if self.exit is not None:
            warm.ended = True
        if self.kept and not self.doomed and self.sb._keep(warm):
            _remove_tree(self.service.grants_dir)
        else:
            self.sb._drop(warm)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as fh:
            found += [int(x) for x in fh.read().split()]
    return found


def _alone(outer: int) -> bool:
    """Whether the sandbox of outer child ``outer`` is down to the outer child and its one
    child, the warm child, which has no child process. False when it cannot be told (no
    ``/proc/PID/task/TID/children``, a kernel without CONFIG_PROC_CHILDREN: no reuse)."""
    try:
        inner = _children(outer)
        return len(inner) == 1 and not _children(inner[0])
    except (OSError, ValueError):
        return False


def _exit_code(message: dict[str, Any]) -> int | None:
    code = message.get("code")
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def _call_done(message: dict[str, Any], number: int) -> bool:
    """Whether ``message`` says call ``number`` ended by itself (exit 0)."""
    return (message.get("t") == "call_done" and message.get("n") == number
            and _exit_code(message) == 0)


def _usage_fields(message: dict[str, Any]) -> dict[str, float]:
    cpu, rss = message.get("cpu_s"), message.get("max_rss_kb")
    return {"cpu_s": float(cpu) if _number(cpu) else 0.0,
            "max_rss_kb": float(rss) if _number(rss) else 0.0}


def _reuse_key(request: SandboxRequest, reuse: str) -> tuple[object, ...]:
    repo = str(request.repo_dir)
    return (reuse, repo, os.path.realpath(repo), astuple(request.limits),
            request.limits.effective_threads,
            tuple(sorted(x.value for x in request.required_layers)),
            tuple(sorted(x.value for x in request.unsafe_skip_layers)),
            bytecode.compiled(repo))


def _remember(sandbox: Sandbox, warm: _Warm) -> None:
    with _warm_lock:
        _warm_lru[warm] = weakref.ref(sandbox)
        _warm_lru.move_to_end(warm)


def _forget(warm: _Warm) -> None:
    with _warm_lock:
        _warm_lru.pop(warm, None)


def _evict_one(current: Sandbox) -> bool:
    """Close the least recently used warm child whose sandbox is free (this one's
    included); False when none can be closed now."""
    with _warm_lock:
        candidates = list(_warm_lru.items())
    for warm, ref in candidates:
        owner = ref()
        if owner is None:
            _forget(warm)
            return True
        if owner is current:
            owner._drop(warm)
            return True
        if owner._lock.acquire(blocking=False):
            try:
                owner._drop(warm)
            finally:
                owner._lock.release()
            return True
    return False


def _usage(exit: dict[str, Any] | None) -> dict[str, float]:
    # What the zygote or a warm child says: for reports only, never a decision.
    if exit is None:
        return {}
    cpu, rss = exit.get("cpu_s"), exit.get("max_rss_kb")
    return {"cpu_s": float(cpu) if _number(cpu) else 0.0,
            "max_rss_mb": float(rss) / 1024 if _number(rss) else 0.0}


def _number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
        value)


def _str_list(value: object) -> TypeGuard[list[str]]:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _not_world_readable(repo: Path) -> str | None:
    seen = 0
    for dirpath, _, filenames in walk(repo):
        st = os.stat(dirpath)
        if st.st_mode & 0o005 != 0o005:
            return dirpath
        for name in filenames:
            seen += 1
            if seen > _ROOT_CHECK_MAX:
                return None
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and not st.st_mode & stat.S_IROTH:
                return path
    return None


def _remove_tree(path: Path) -> None:
    remove_tree(path)  # iterative: a repo tree can be deeper than the recursion limit


# --- module-level convenience ------------------------------------------------------------

_default: Sandbox | None = None
_default_lock = threading.Lock()
_machine_layers: dict[bool, dict[Layer, LayerStatus]] = {}
_warm: dict[tuple[str, ...], Sandbox] = {}
_MAX_WARM = 4


def default_sandbox(packages: tuple[str, ...] = ()) -> Sandbox:
    """The process-wide Sandbox for this set of preloaded packages (one zygote per set,
    started on first use, reused by every later call with the same set, closed at exit;
    at most four sets are kept, the least recently used is closed first)."""
    global _default
    key = tuple(sorted(packages))
    with _default_lock:
        if not key:
            if _default is None:
                _default = Sandbox()
                atexit.register(_default.close)
            return _default
        sandbox = _warm.pop(key, None)
        if sandbox is None:
            sandbox = Sandbox(packages=key)
            atexit.register(sandbox.close)
            while len(_warm) >= _MAX_WARM:
                _warm.pop(next(iter(_warm))).close()
        _warm[key] = sandbox  # most recently used last
        return sandbox


def run_sandboxed(request: SandboxRequest, broker: Broker | None = None) -> SandboxResult:
    """Run ``request`` through the process-wide Sandbox."""
    return default_sandbox().run(request, broker)


def probe_layers() -> dict[Layer, LayerStatus]:
    """Which isolation layers a sandboxed child gets on this machine, and why not.

    Uses the running process-wide Sandbox if there is one, else a short-lived
    zygote that does not import torch (a fraction of a second).
    """
    if _default is not None and _default.zygote_pid is not None:
        return _default.layers()
    with Sandbox(preload_torch=False) as sandbox:
        return sandbox.layers()
