"""Where torch's hub directory is: the same rules as ``torch.hub.get_dir``.

``set_dir`` wins; else ``$TORCH_HOME/hub``; else ``$XDG_CACHE_HOME/torch/hub``;
else ``~/.cache/torch/hub``. safehub keeps its own cache in a ``safehub``
subfolder, so torch.hub's files and safehub's never mix.
"""

from __future__ import annotations

import os

__all__ = ["SAFEHUB_SUBDIR", "get_dir", "set_dir"]

SAFEHUB_SUBDIR = "safehub"

_override: str | None = None


def get_dir() -> str:
    """The hub directory (torch.hub's rules; no directory is created)."""
    if _override is not None:
        return _override
    torch_home = os.path.expanduser(os.getenv(
        "TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch")))
    return os.path.join(torch_home, "hub")


def set_dir(d: str | os.PathLike[str]) -> None:
    """Use ``d`` as the hub directory from now on (process-wide, as torch.hub)."""
    global _override
    _override = os.path.expanduser(os.fspath(d))
