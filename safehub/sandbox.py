"""Run a repository's code in a locked-down child process and keep only its tensors.

>>> from safehub.sandbox import Sandbox, SandboxRequest
>>> with Sandbox() as sandbox:
...     result = sandbox.run(SandboxRequest.for_load("path/to/repo", "resnet18"))
>>> result.tensors            # dict[str, torch.Tensor]
>>> result.layers_applied     # {Layer.LANDLOCK: "ABI 7, TCP bind/connect denied, ...", ...}

``torch.hub.load`` imports a stranger's ``hubconf.py`` into your process, with your
credentials, files and network; ``list`` and ``help`` do too. Here every line of
repo code (the import, ``list``, ``help``, the entrypoint and whatever it calls)
runs in a child forked from a clean zygote and isolated layer by layer (see
:class:`Layer` and :func:`probe_layers`). Arguments go in as JSON values; tensors
come back as safetensors in a sealed memfd that the parent checks and maps without
copying; nothing crosses as a pickle. Downloads the code asks for go through the
caller's :class:`Broker`.

This module takes plain values, not policies: the policy engine decides the
limits and the required layers and passes them in.
"""

from __future__ import annotations

from safehub._sandbox.broker import Broker, DownloadRefused
from safehub._sandbox.errors import (
    BadResult,
    ChildCrashed,
    IsolationUnavailable,
    LimitExceeded,
    RepoCodeError,
    SandboxFailure,
    SandboxViolation,
    UnknownEntrypoint,
)
from safehub._sandbox.shape import Node as ResultShape
from safehub._sandbox.spec import (
    ALL_LAYERS,
    JSONValue,
    Layer,
    LayerStatus,
    Operation,
    SandboxLimits,
    SandboxRequest,
    SandboxResult,
)
from safehub._sandbox.supervisor import Sandbox, default_sandbox, probe_layers, run_sandboxed
from safehub.errors import SandboxError

__all__ = [
    "ALL_LAYERS",
    "BadResult",
    "Broker",
    "ChildCrashed",
    "DownloadRefused",
    "IsolationUnavailable",
    "JSONValue",
    "Layer",
    "LayerStatus",
    "LimitExceeded",
    "Operation",
    "RepoCodeError",
    "ResultShape",
    "Sandbox",
    "SandboxError",
    "SandboxFailure",
    "SandboxLimits",
    "SandboxRequest",
    "SandboxResult",
    "SandboxViolation",
    "UnknownEntrypoint",
    "default_sandbox",
    "probe_layers",
    "run_sandboxed",
]
