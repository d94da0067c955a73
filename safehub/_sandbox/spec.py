"""The plain values a caller hands to the sandbox: layers, limits and requests.

Nothing here knows about policies: the policy engine translates its ``[sandbox]``
section into these values (the layer names are the policy's names).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any, TypeAlias

from safehub.errors import InternalError

__all__ = [
    "ALL_LAYERS",
    "JSONValue",
    "Layer",
    "LayerStatus",
    "Operation",
    "SandboxLimits",
    "SandboxRequest",
    "SandboxResult",
    "check_json",
]

JSONValue: TypeAlias = (
    "bool | int | float | str | Sequence[JSONValue] | Mapping[str, JSONValue] | None")


class Layer(str, Enum):
    """An isolation layer, in the order the child applies them.

    The values are the names policies use in ``[sandbox] required_layers``.
    """

    ENV = "env"  # clean interpreter and a scrubbed environment: no tokens, no credentials
    FDS = "fds"  # every inherited descriptor closed but the channel; stdio on /dev/null
    PDEATHSIG = "pdeathsig"  # the child is killed when its parent dies
    UID = "uid"  # started as root: run as a fresh unprivileged uid (limits do not bind root)
    MOUNTNS = "mountns"  # private mounts: a size-limited tmpfs temp folder; hidden paths
    USERNS = "userns"  # a user namespace: no privilege over anything outside
    NETNS = "netns"  # an empty network namespace: no interfaces, not even loopback
    IPCNS = "ipcns"  # no SysV IPC or POSIX message queues shared with the host
    PIDNS = "pidns"  # no other processes visible; the whole tree dies with its init
    CAPS = "caps"  # every capability dropped, bounding set emptied
    RLIMITS = "rlimits"  # address space, CPU, processes, file size, open files, no core dumps
    NONEWPRIVS = "nonewprivs"  # no_new_privs and not dumpable
    LANDLOCK = "landlock"  # read-only Python and repo, one read-write temp folder, no TCP
    SECCOMP = "seccomp"  # no exec, sockets, ptrace, namespaces, mounts, io_uring, keyctl, bpf

    @property
    def summary(self) -> str:
        """One line saying what the layer prevents."""
        return _SUMMARY[self]


_SUMMARY = {
    Layer.ENV: "the child starts from a clean interpreter with a minimal environment",
    Layer.FDS: "inherited file descriptors are closed (only the result channel remains)",
    Layer.PDEATHSIG: "the child dies when its supervisor dies",
    Layer.UID: "when started as root, the child runs as a fresh unprivileged uid",
    Layer.MOUNTNS: "private mount namespace: size-limited tmpfs temp folder, hidden paths",
    Layer.USERNS: "user namespace: no privileges over anything outside the sandbox",
    Layer.NETNS: "network namespace without interfaces: no network at all",
    Layer.IPCNS: "IPC namespace: no shared SysV IPC or POSIX message queues",
    Layer.PIDNS: "PID namespace: other processes invisible, the whole tree is killed at once",
    Layer.CAPS: "all capabilities dropped",
    Layer.RLIMITS: "limits on memory, CPU time, processes, file size, open files; no cores",
    Layer.NONEWPRIVS: "no_new_privs set and the process is not dumpable",
    Layer.LANDLOCK: "filesystem limited to read-only Python and repo plus a temp folder; no TCP",
    Layer.SECCOMP: "system calls for exec, sockets, ptrace, namespaces, mounts etc. denied",
}

ALL_LAYERS: frozenset[Layer] = frozenset(Layer)


@dataclass(frozen=True)
class LayerStatus:
    """Whether a layer can be (or was) applied here, and why not when it cannot."""

    layer: Layer
    available: bool
    detail: str


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits for one sandboxed call. Defaults match safehub's default policy.

    ``memory_mb`` caps the address space (it includes the mapped result);
    ``max_file_mb`` caps each file written, the result, and (when a mount namespace is
    available) the total size of the private temporary folder. ``threads`` is the
    number of compute threads the repo code gets (None: the CPUs, up to 8).
    """

    timeout_s: float = 300.0
    memory_mb: int = 16384
    cpu_s: int = 600
    max_processes: int = 64
    max_file_mb: int = 4096
    max_open_files: int = 256
    threads: int | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.timeout_s, (int, float)) and self.timeout_s > 0
                and math.isfinite(self.timeout_s)):
            raise ValueError(f"timeout_s must be a positive number, not {self.timeout_s!r}")
        for name in ("memory_mb", "cpu_s", "max_processes", "max_file_mb", "max_open_files"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if self.max_open_files < 16:
            raise ValueError("max_open_files must be at least 16 (Python needs a few)")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads must be a positive integer or None, not {self.threads!r}")

    @property
    def effective_threads(self) -> int:
        """The thread count the child uses, never more than the process limit allows."""
        wanted = self.threads if self.threads is not None else min(os.cpu_count() or 1, 8)
        return max(1, min(wanted, self.max_processes // 2))

    def tightened(self, **changes: float | int | None) -> SandboxLimits:
        """A copy where each given limit is the smaller of the current and the given value."""
        values: dict[str, Any] = {}
        for name, value in changes.items():
            if value is None:
                continue
            current = getattr(self, name)
            values[name] = value if current is None else min(current, value)
        return replace(self, **values)


class Operation(str, Enum):
    """What the child does with the repository: torch.hub's ``list``, ``help``, ``load``."""

    LIST = "list"
    HELP = "help"
    LOAD = "load"


_MAX_JSON_DEPTH = 32


def check_json(value: object, where: str = "value", _depth: int = 0) -> JSONValue:
    """Return ``value`` as plain JSON types (tuples become lists) or raise TypeError."""
    if _depth > _MAX_JSON_DEPTH:
        raise TypeError(f"{where}: nested deeper than {_MAX_JSON_DEPTH} levels")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{where}: {value!r} is not a finite number")
        return float(value)
    if isinstance(value, (list, tuple)):
        return [check_json(v, f"{where}[{i}]", _depth + 1) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out: dict[str, JSONValue] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: key {k!r} is not a string")
            out[k] = check_json(v, f"{where}[{k!r}]", _depth + 1)
        return out
    raise TypeError(f"{where}: {type(value).__name__} is not a JSON value (only None, bool, "
                    "int, float, str, lists and string-keyed dicts cross into the sandbox)")


@dataclass(frozen=True)
class SandboxRequest:
    """One sandboxed call: which repository, which operation, under which conditions.

    ``required_layers`` must all be applied or the call refuses to run (SH500);
    missing optional layers are reported in the result. ``unsafe_skip_layers``
    leaves layers out on purpose (diagnosis and tests only; it logs a warning).
    ``as_file`` (load): the result comes back as the checked safetensors file
    (``SandboxResult.file``) instead of torch tensors, so the caller needs no torch.
    """

    repo_dir: Path
    op: Operation
    entrypoint: str | None = None
    args: tuple[JSONValue, ...] = ()
    kwargs: Mapping[str, JSONValue] = field(default_factory=dict)
    limits: SandboxLimits = field(default_factory=SandboxLimits)
    required_layers: frozenset[Layer] = frozenset()
    unsafe_skip_layers: frozenset[Layer] = frozenset()
    seed: int | None = None
    as_file: bool = False
    # load: TorchScript modules also send their archive (the caller scans it; only where
    # the policy accepts TorchScript)
    script_archives: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "repo_dir", Path(os.path.abspath(self.repo_dir)))
        object.__setattr__(self, "op", Operation(self.op))
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(
                self.seed, bool) or not 0 <= self.seed < 2**63):
            raise ValueError(f"seed must be an integer from 0 to 2**63-1, not {self.seed!r}")
        if self.seed is not None and self.op is not Operation.LOAD:
            raise ValueError("only load takes a seed")
        if self.script_archives is not False and (self.script_archives is not True or
                                                  self.op is not Operation.LOAD):
            raise ValueError("script_archives is a bool, and only for load")
        if self.op is Operation.LIST:
            if self.entrypoint is not None:
                raise ValueError("list takes no entrypoint")
        elif not isinstance(self.entrypoint, str) or not self.entrypoint:
            raise ValueError(f"{self.op.value} needs an entrypoint name")
        if self.op is not Operation.LOAD and (self.args or self.kwargs):
            raise ValueError(f"{self.op.value} takes no arguments")
        args = check_json(list(self.args), "args")
        if not isinstance(args, list):
            raise InternalError("entrypoint arguments did not stay a list")
        object.__setattr__(self, "args", tuple(args))
        kwargs = check_json(dict(self.kwargs), "kwargs")
        object.__setattr__(self, "kwargs", kwargs)
        object.__setattr__(self, "required_layers",
                           frozenset(Layer(v) for v in self.required_layers))
        object.__setattr__(self, "unsafe_skip_layers",
                           frozenset(Layer(v) for v in self.unsafe_skip_layers))
        both = self.required_layers & self.unsafe_skip_layers
        if both:
            raise ValueError(f"layers both required and skipped: {sorted(x.value for x in both)}")

    @classmethod
    def for_list(cls, repo_dir: str | os.PathLike[str], *,
                 limits: SandboxLimits | None = None,
                 required_layers: Iterable[Layer] = (),
                 unsafe_skip_layers: Iterable[Layer] = ()) -> SandboxRequest:
        """A request for torch.hub.list: the callable entrypoints of ``hubconf.py``."""
        return cls(Path(repo_dir), Operation.LIST, limits=limits or SandboxLimits(),
                   required_layers=frozenset(required_layers),
                   unsafe_skip_layers=frozenset(unsafe_skip_layers))

    @classmethod
    def for_help(cls, repo_dir: str | os.PathLike[str], entrypoint: str, *,
                 limits: SandboxLimits | None = None,
                 required_layers: Iterable[Layer] = (),
                 unsafe_skip_layers: Iterable[Layer] = ()) -> SandboxRequest:
        """A request for torch.hub.help: the docstring of one entrypoint."""
        return cls(Path(repo_dir), Operation.HELP, entrypoint, limits=limits or SandboxLimits(),
                   required_layers=frozenset(required_layers),
                   unsafe_skip_layers=frozenset(unsafe_skip_layers))

    @classmethod
    def for_load(cls, repo_dir: str | os.PathLike[str], entrypoint: str,
                 args: Sequence[JSONValue] = (), kwargs: Mapping[str, JSONValue] | None = None,
                 *, limits: SandboxLimits | None = None,
                 required_layers: Iterable[Layer] = (),
                 unsafe_skip_layers: Iterable[Layer] = (),
                 seed: int | None = None) -> SandboxRequest:
        """A request for torch.hub.load: call the entrypoint, keep only its tensors.

        ``seed`` seeds torch, ``random`` and numpy in the child before the call."""
        return cls(Path(repo_dir), Operation.LOAD, entrypoint, tuple(args), dict(kwargs or {}),
                   limits=limits or SandboxLimits(), required_layers=frozenset(required_layers),
                   unsafe_skip_layers=frozenset(unsafe_skip_layers), seed=seed)


@dataclass(frozen=True)
class SandboxResult:
    """What came back from one sandboxed call, and how it was contained.

    ``tensors`` (load), ``entrypoints`` (list) or ``doc`` (help) holds the answer.
    ``layers_applied`` maps each applied layer to a detail line; ``layers_missing``
    each layer that was not applied to the reason. ``timings`` are measured by the
    parent (seconds); ``usage`` is the child's CPU seconds and peak RSS in MiB.
    ``aliased`` lists groups of keys whose tensors shared storage in the child (each
    now has its own copy); ``fetched`` the URLs and repos the broker served.
    ``shape`` (load) is the structure the entrypoint returned: which key prefix was
    which element, which leaves were dropped and why (see :mod:`safehub._sandbox.shape`).
    ``file`` (load with ``as_file``): the checked result as a
    :class:`~safehub._sandbox.result.TensorFile` (``tensors`` is then empty).
    """

    op: Operation
    tensors: dict[str, Any] = field(default_factory=dict)
    entrypoints: tuple[str, ...] = ()
    doc: str | None = None
    layers_applied: Mapping[Layer, str] = field(default_factory=dict)
    layers_missing: Mapping[Layer, str] = field(default_factory=dict)
    timings: Mapping[str, float] = field(default_factory=dict)
    usage: Mapping[str, float] = field(default_factory=dict)
    aliased: tuple[tuple[str, ...], ...] = ()
    fetched: tuple[str, ...] = ()
    shape: Any = None
    file: Any = None
    # load: TorchScript archives by module prefix, scanned and allowed (safehub._hub.torchscript)
    torchscript: Mapping[str, bytes] = field(default_factory=dict)
