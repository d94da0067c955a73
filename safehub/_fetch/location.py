"""Where torch's hub directory is: the same rules as ``torch.hub.get_dir``.

``set_dir`` wins; else ``torch.hub.set_dir``'s folder when torch.hub is already imported
and one was set (read from the module, never importing torch: scan-only paths stay
torch-free); else ``$TORCH_HOME/hub``; else ``$XDG_CACHE_HOME/torch/hub``; else
``~/.cache/torch/hub``. safehub keeps its own cache in a ``safehub`` subfolder, so
torch.hub's files and safehub's never mix; torch.hub's ``checkpoints/`` and repo folders
beside it are a verified source (:mod:`safehub._fetch.torch_cache`, ``torch_repos``).
"""

from __future__ import annotations

import os
import sys

__all__ = ["SAFEHUB_SUBDIR", "get_dir", "set_dir"]

SAFEHUB_SUBDIR = "safehub"

_override: str | None = None


def get_dir() -> str:
    """The hub directory (torch.hub's rules; no directory is created)."""
    if _override is not None:
        return _override
    torch_hub = sys.modules.get("torch.hub")
    chosen = getattr(torch_hub, "_hub_dir", None) if torch_hub is not None else None
    if isinstance(chosen, str) and chosen:
        return chosen
    torch_home = os.path.expanduser(os.getenv(
        "TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch")))
    return os.path.join(torch_home, "hub")


def set_dir(d: str | os.PathLike[str]) -> None:
    """Use ``d`` as the hub directory from now on (process-wide, as torch.hub)."""
    global _override
    _override = os.path.expanduser(os.fspath(d))
