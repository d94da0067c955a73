"""What runs inside the sandboxed child, from the zygote's fork to ``os._exit``.

Every module this needs is imported by the zygote before any fork, and before the
repository is put on ``sys.path``: a repo that ships ``json.py``, ``safetensors/``
or ``os.py`` finds those names already taken in ``sys.modules``, so it cannot
replace the code that packs the result (and the parent re-checks the result
anyway: nothing the child says after repo code ran is trusted).

Exit codes of the inner child: 0 done, 71 a required layer is missing, 72 an
internal error, 73 the channel was gone. The outer child exits with the inner
child's code, or 128 + the signal that killed it.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import gc
import importlib.util
import os
import pickle
import random
import signal
import sys
import time
import traceback
from typing import Any, NoReturn

from safehub._sandbox import broker, layers, shape, writer
from safehub._sandbox.channel import Channel, ChannelClosed
from safehub._sandbox.spec import Layer

__all__ = ["run_outer"]

EXIT_SETUP = 71
EXIT_INTERNAL = 72
EXIT_CHANNEL = 73
_MAX_TEXT = 64 << 10


def run_outer(config: dict[str, Any], channel_fd: int, zygote_pid: int) -> NoReturn:
    """The outer child: early layers, namespaces, then fork and wait for the inner child."""
    code = EXIT_INTERNAL
    try:
        started = time.monotonic()
        setup = layers.Setup(config)
        try:
            setup.outer(channel_fd, zygote_pid)
        except layers.SetupAbort as abort:
            _report_abort(setup.channel_fd, abort)
            os._exit(EXIT_SETUP)
        channel_fd = setup.channel_fd
        alive_r, alive_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(alive_w)
            _run_inner(setup, channel_fd, alive_r, started)
        os.close(alive_r)
        os.close(channel_fd)  # only the inner child talks to the parent
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code < 0:
            code = 128 - code
    except BaseException:  # a forked child must never return into the zygote
        code = EXIT_INTERNAL
    finally:
        os._exit(code)


def _report_abort(channel_fd: int, abort: layers.SetupAbort) -> None:
    with contextlib.suppress(OSError, ChannelClosed):
        Channel.from_fd(channel_fd).send({
            "t": "setup_failed", "layer": abort.layer.value if abort.layer else None,
            "reason": abort.reason})


def _run_inner(setup: layers.Setup, channel_fd: int, alive_fd: int, started: float) -> NoReturn:
    code = EXIT_INTERNAL
    try:
        # A warm child counts its threads before it forks a call; /proc is out of reach
        # once Landlock applies, so its task folder is opened first.
        tasks = -1
        if setup.config["op"] == "warm":
            with contextlib.suppress(OSError):
                tasks = os.open("/proc/self/task", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            setup.inner(alive_fd)
        except layers.SetupAbort as abort:
            _report_abort(channel_fd, abort)
            os._exit(EXIT_SETUP)
        channel = Channel.from_fd(channel_fd)
        config = setup.config
        threads = int(config["limits"].get("threads") or 1)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)
        os.chdir(setup.tmp_dir)
        channel.send({
            "t": "ready", "pid": os.getpid(), "setup_s": time.monotonic() - started,
            "applied": {k.value: v for k, v in setup.applied.items()},
            "missing": {k.value: v for k, v in setup.missing.items()},
            "notes": setup.notes,
        })
        if config["op"] == "warm":
            _serve_warm(channel, config, tasks,
                        confine=Layer.LANDLOCK in setup.applied)
        elif config["op"] != "probe":
            _serve(channel, config)
        code = 0
    except (ChannelClosed, BrokenPipeError):
        code = EXIT_CHANNEL
    except BaseException:  # never unwind into the zygote's loop
        code = EXIT_INTERNAL
    finally:
        os._exit(code)


class _NoSuchEntrypoint(Exception):
    def __init__(self, name: str, names: list[str]):
        super().__init__(f"Cannot find callable {name} in hubconf")
        self.name = name
        self.names = names


def _receive_call(channel: Channel) -> dict[str, Any]:
    # The call's arguments come straight from the parent on this child's own channel,
    # never through the zygote: nothing of one call stays in memory a later child
    # inherits. A load's call carries the memfd its result is written into (the sandbox
    # cannot create one); it stays a descriptor, kept under "result_fd".
    message, fds = channel.recv()
    if message.get("t") != "call" or len(fds) > 1:
        for fd in fds:
            os.close(fd)
        raise ChannelClosed("the supervisor sent no call")
    message["result_fd"] = fds[0] if fds else None
    return message


def _seed(seed: int) -> None:
    """As ``torch.manual_seed(s); random.seed(s); numpy.random.seed(s)`` before torch.hub.load."""
    import torch

    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy
    except ImportError:
        return
    numpy.random.seed(seed % (1 << 32))


def _entrypoints(module: Any) -> list[str]:
    return [n for n in dir(module)
            if isinstance(n, str) and not n.startswith("_") and callable(getattr(module, n))]


def _serve(channel: Channel, config: dict[str, Any]) -> None:
    """Run the operation on the repository and send the result. Untrusted code runs here."""
    call = _receive_call(channel)
    _prepare(channel, config)
    _serve_call(channel, config, call)


def _prepare(channel: Channel, config: dict[str, Any]) -> broker.Requester:
    """What every call needs before repository code: the download stubs, mapped loads,
    the repository's bytecode and its folder on ``sys.path``."""
    requester = broker.install_stubs(channel)
    _map_loaded_files()
    sys.dont_write_bytecode = True  # leave the repo's folder as it is
    repo = config["repo_dir"]
    prefix = config.get("pycache_dir")
    _use_bytecode(repo, prefix if isinstance(prefix, str) else _NO_BYTECODE)
    sys.path.insert(0, repo)
    return requester


def _serve_call(channel: Channel, config: dict[str, Any], call: dict[str, Any],
                module: Any = None) -> None:
    """Run one call (torch.hub's per-call steps: seed, execute hubconf.py, the operation)
    and send its result; ``module``: hubconf.py already executed for this call (seed
    included). Untrusted code runs here."""
    repo = config["repo_dir"]
    op = call.get("op", config["op"])
    phase = "import"
    try:
        if module is None:
            if op == "load" and isinstance(call.get("seed"), int):
                _seed(call["seed"])
            module = _import_hubconf(repo)
        if op == "list":
            channel.send({"t": "result", "op": "list", "entrypoints": _entrypoints(module)})
            return
        entry = _entry(module, str(call["entrypoint"]))
        if op == "help":
            doc = entry.__doc__
            channel.send({"t": "result", "op": "help",
                          "doc": None if doc is None else str(doc)[:_MAX_TEXT * 16]})
            return
        phase = "call"
        result_fd = call["result_fd"]
        if not isinstance(result_fd, int):
            raise ChannelClosed("the supervisor sent no result file with the call")
        value = entry(*call["args"], **call["kwargs"])
        scripts = call.get("scripts") is True
        del call
        phase = "convert"
        flat, manifest = shape.flatten(value, scripts=scripts)
        del value
        tensors = writer.check_tensors(flat)
        packed = writer.pack(tensors, result_fd)
        channel.send({"t": "result", "op": "load", "keys": list(tensors),
                      "count": packed.count, "size": packed.size,
                      "aliased": packed.aliased, "shape": manifest}, [packed.fd])
    except _NoSuchEntrypoint as missing:
        channel.send({"t": "error", "kind": "unknown_entrypoint", "name": missing.name[:200],
                      "entrypoints": [n[:200] for n in missing.names[:1000]]})
    except (writer.TensorProblem, shape.ShapeError) as problem:
        keys = problem.keys if isinstance(problem, writer.TensorProblem) else []
        channel.send({"t": "error", "kind": "bad_result", "message": str(problem),
                      "keys": [str(k)[:200] for k in keys[:100]]})
    except ChannelClosed:
        raise
    except BaseException as exc:  # report any failure of repo code
        channel.send(_describe(exc, phase))


_OPS = ("list", "help", "load")


def _serve_warm(warm: Channel, config: dict[str, Any], tasks: int, *,
                confine: bool) -> None:
    """A warm child: import hubconf.py once, then serve each call of this repository in a
    grandchild forked from that state (see ``supervisor``'s reuse). Untrusted code runs
    here (the first import) and in every grandchild.

    Each call comes as a channel of its own (``warm_call`` with one descriptor); its
    arguments go to the grandchild alone, on that channel. After a grandchild ends,
    every other process of the sandbox is killed (this child is the init of its PID
    namespace) and the call's folder removed, then ``call_done`` reports its exit.
    When reuse is not safe (no PID namespace of our own, threads after the import, an
    import that failed) the first call is served here, as a one-off child does.
    """
    number, channel, first = _next_call(warm, 1)
    requester = _prepare(channel, config)
    tmp_dir = os.getcwd()
    module = None
    try:
        # As torch.hub's first call: the seed, then the import (the repo's modules may
        # draw random numbers as they are imported); the first call uses this module.
        if isinstance(first.get("seed"), int):
            _seed(first["seed"])
        module = _import_hubconf(config["repo_dir"])  # warms sys.modules
    except BaseException:  # the call reports it when it executes hubconf.py again
        module = None
    reusable = module is not None and os.getpid() == 1 and _threads(tasks) == 1
    if reusable:
        _end_others()
    kept = set(os.listdir(tmp_dir))
    warm.send({"t": "warm", "reusable": reusable})
    if not reusable:
        _serve_call(channel, config, _checked_call(_receive_call(channel)), module)
        return
    while True:
        _fork_call(warm, channel, requester, config, tmp_dir, kept, number, tasks, module,
                   confine)
        del channel
        module = None  # later calls execute hubconf.py afresh, as torch.hub does
        number, channel, _ = _next_call(warm, number + 1)


def _next_call(warm: Channel, number: int) -> tuple[int, Channel, dict[str, Any]]:
    message, fds = warm.recv()
    if message.get("t") != "warm_call" or message.get("n") != number or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise ChannelClosed("the supervisor sent no call channel")
    return number, Channel.from_fd(fds[0]), message


def _checked_call(call: dict[str, Any]) -> dict[str, Any]:
    if call.get("op") not in _OPS:
        raise ChannelClosed("a call without an operation")
    return call


def _fork_call(warm: Channel, channel: Channel, requester: broker.Requester,
               config: dict[str, Any], tmp_dir: str, kept: set[str], number: int,
               tasks: int, module: Any, confine: bool) -> None:
    folder = os.path.join(tmp_dir, f"call-{number}")
    os.mkdir(folder, 0o700)
    # ``random`` reseeds itself in a forked child: the first call keeps the state its
    # import (and seed) left, as in torch.hub's process.
    state = random.getstate() if module is not None else None
    # Objects the warm child holds go to the collector's permanent generation: a
    # collection in the grandchild then leaves their pages shared instead of writing to
    # each of them (copy-on-write of the whole heap doubled a call's CPU time).
    gc.freeze()
    pid = os.fork()
    if pid == 0:
        code = EXIT_INTERNAL
        try:
            if state is not None:
                random.setstate(state)
            # Nothing of the warm child's own: its channel, its task folder. The call's
            # channel takes the channel's usual place, as in a one-off child.
            warm.close()
            if tasks >= 0:
                os.close(tasks)
            channel = _at_channel_fd(channel)
            requester.use(channel)
            if confine:
                layers.confine_call(config, folder)
            _call_folder(folder)
            _serve_call(channel, config, _checked_call(_receive_call(channel)), module)
            code = 0
        except (ChannelClosed, BrokenPipeError):
            code = EXIT_CHANNEL
        except BaseException:  # never unwind into the warm child's loop
            code = EXIT_INTERNAL
        finally:
            os._exit(code)
    channel.close()  # the grandchild holds the call's only copy
    try:
        _, status, usage = os.wait4(pid, 0)
    finally:
        _end_others()
    # The call's folder goes before the call counts as done. What this child cannot
    # remove (a folder the call made without read permission: chmod is ignored in the
    # sandbox) would pile up call after call: the warm child ends instead, and the
    # parent, outside the sandbox, removes the whole folder.
    _clear(tmp_dir, kept)
    if set(os.listdir(tmp_dir)) - kept:
        raise ChannelClosed("the call left files in its folder that cannot be removed")
    warm.send({"t": "call_done", "n": number, "code": os.waitstatus_to_exitcode(status),
               "cpu_s": usage.ru_utime + usage.ru_stime, "max_rss_kb": usage.ru_maxrss})


def _at_channel_fd(channel: Channel) -> Channel:
    fd = channel.sock.detach()
    if fd != layers.CHANNEL_FD:
        os.dup2(fd, layers.CHANNEL_FD, inheritable=False)
        os.close(fd)
    return Channel.from_fd(layers.CHANNEL_FD)


def _call_folder(folder: str) -> None:
    """The call's own working and temporary folder (removed after the call)."""
    os.chdir(folder)
    os.environ.update(HOME=folder, TMPDIR=folder, TORCH_HOME=os.path.join(folder, "torch"),
                      XDG_CACHE_HOME=os.path.join(folder, ".cache"))
    import tempfile

    tempfile.tempdir = folder


def _end_others() -> None:
    """Kill and reap every other process of this PID namespace (only its init calls
    this: ``kill(-1)`` there reaches the namespace's processes and nothing else)."""
    if os.getpid() != 1:
        raise ChannelClosed("not the init of a PID namespace: processes cannot be ended")
    while True:
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            break
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                break
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def _clear(tmp_dir: str, kept: set[str]) -> None:
    """Remove what calls left in the temporary folder (what the import made stays)."""
    import shutil

    for name in os.listdir(tmp_dir):
        if name in kept:
            continue
        path = os.path.join(tmp_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)


def _threads(tasks: int) -> int:
    if tasks < 0:
        return 0
    try:
        return len(os.listdir(tasks))
    except OSError:
        return 0


# Where the repository's bytecode is looked up when the parent has no compiled copy (its
# folder could not be made: /tmp full, say): a path procfs never holds, so each module
# compiles from its source. Without a prefix the lookup was the repository's own
# __pycache__, where a shipped unchecked-hash .pyc runs in place of its source.
_NO_BYTECODE = "/proc/self/safehub-no-bytecode"


def _use_bytecode(repo: str, prefix: str) -> None:
    """Read the repository's modules from the parent's compiled copy (see ``bytecode``);
    every other module keeps its own ``__pycache__``.

    A module is the repository's by its real path, however the import spelled it: a
    hubconf that puts ``os.path.realpath(here)/src`` on ``sys.path`` (the repo reached
    through a symbolic link) had its modules' bytecode looked up in the repository's own
    ``__pycache__``, where a shipped unchecked-hash ``.pyc`` ran in place of the source."""
    import importlib._bootstrap_external as external

    original = external.cache_from_source
    inside = repo.rstrip(os.sep) + os.sep
    real_inside = os.path.realpath(repo).rstrip(os.sep) + os.sep

    def cache_from_source(path: str, debug_override: Any = None, *,
                          optimization: Any = None) -> str:
        spelled = str(path)
        if not spelled.startswith(inside) and not os.path.realpath(
                os.path.abspath(spelled)).startswith(real_inside):
            return original(path, debug_override, optimization=optimization)
        saved = sys.pycache_prefix
        sys.pycache_prefix = prefix
        try:
            return original(path, debug_override, optimization=optimization)
        finally:
            sys.pycache_prefix = saved

    external.cache_from_source = cache_from_source  # type: ignore[assignment]


def _map_loaded_files() -> None:
    """Inside the sandbox, ``torch.load(path)`` maps the file (torch's ``mmap=True``)
    instead of reading it: the tensors are copied into the result memfd anyway, so
    this keeps one copy of the weights instead of two. Files torch cannot map (the
    legacy format) load as before."""
    import torch

    original = torch.load

    @functools.wraps(original)
    def load(f: Any, *args: Any, **kwargs: Any) -> Any:
        if (isinstance(f, (str, os.PathLike)) and kwargs.get("mmap") is None and not args[1:]
                and kwargs.get("pickle_module") is None):
            try:
                return original(f, *args, **{**kwargs, "mmap": True})
            except (RuntimeError, ValueError, OSError, pickle.UnpicklingError):
                pass  # not mappable: load it the ordinary way (errors surface from there)
        return original(f, *args, **kwargs)

    torch.load = load


def _import_hubconf(repo: str) -> Any:
    # As torch.hub._import_module: a fresh module named "hubconf.py" (torch.hub's name).
    spec = importlib.util.spec_from_file_location("hubconf.py",
                                                  os.path.join(repo, "hubconf.py"))
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load hubconf.py from {repo}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _entry(module: Any, name: str) -> Any:
    # As torch.hub._load_entry_from_hubconf, dependencies check included.
    dependencies = getattr(module, "dependencies", None)
    if dependencies is not None:
        missing = [p for p in dependencies if importlib.util.find_spec(p) is None]
        if missing:
            raise RuntimeError(f"Missing dependencies: {', '.join(missing)}")
    func = getattr(module, name, None)
    if func is None or not callable(func):
        raise _NoSuchEntrypoint(name, _entrypoints(module))
    return func


def _describe(exc: BaseException, phase: str) -> dict[str, Any]:
    kind = type(exc)
    name = kind.__qualname__ if kind.__module__ == "builtins" else (
        f"{kind.__module__}.{kind.__qualname__}")
    try:
        message = str(exc)
    except BaseException:  # a hostile __str__
        message = "<unprintable>"
    try:
        tb = "".join(traceback.format_exception(kind, exc, exc.__traceback__))
    except BaseException:  # a hostile traceback
        tb = ""
    code = getattr(exc, "errno", None)
    ref = None
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            break
        if isinstance(seen, broker.DownloadRefused):
            ref = seen.request_id
            break
        seen = seen.__cause__ or seen.__context__
    return {"t": "error", "kind": "exception", "phase": phase, "type": str(name)[:200],
            "message": message[:_MAX_TEXT], "traceback": tb[-_MAX_TEXT:],
            "errno": code if isinstance(code, int) and not isinstance(code, bool) else None,
            "errno_name": errno.errorcode.get(code, "") if isinstance(code, int) else "",
            "broker_ref": ref, "memory": isinstance(exc, MemoryError)}


def preload() -> None:
    """Import and initialise what the child needs, in the zygote, before any fork."""
    from safehub._sandbox import seccomp

    seccomp.library()
    layers.python_read_roots()
