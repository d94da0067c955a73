"""safehub: use third-party PyTorch models without handing strangers code execution.

``import safehub as hub`` offers torch.hub's API (``load``, ``list``, ``help``,
``load_state_dict_from_url``, ``download_url_to_file``, ``get_dir``, ``set_dir``)
backed by a policy engine, a static scanner, signature checks and a sandbox.
Submodules are imported on first use so that ``import safehub`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from safehub._version import __version__
from safehub.errors import (
    FetchError,
    IntegrityError,
    PolicyError,
    PolicyViolation,
    SafehubError,
    SandboxError,
    UnsafeModel,
)

# name -> module that defines it; resolved lazily by __getattr__.
_LAZY = {
    "scan": "safehub.scan",
    "ScanReport": "safehub.findings",
    "ScanOptions": "safehub.scan",
    "Fetcher": "safehub.fetch",
    "get_dir": "safehub.hub",
    "set_dir": "safehub.hub",
    "download_url_to_file": "safehub.hub",
    "load_state_dict_from_url": "safehub.hub",
    "load": "safehub.hub",
    "list": "safehub.hub",
    "help": "safehub.hub",
    "AuditReport": "safehub.audit",
    "Conversion": "safehub.convert",
    "enforce": "safehub.enforce",
}

__all__ = [
    "AuditReport",
    "Conversion",
    "FetchError",
    "Fetcher",
    "IntegrityError",
    "PolicyError",
    "PolicyViolation",
    "SafehubError",
    "SandboxError",
    "ScanOptions",
    "ScanReport",
    "UnsafeModel",
    "__version__",
    "download_url_to_file",
    "enforce",
    "get_dir",
    "help",
    "list",
    "load",
    "load_state_dict_from_url",
    "scan",
    "set_dir",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'safehub' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
