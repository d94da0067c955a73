"""Where the caches are by default: torch's hub directory and the Hugging Face hub cache.

torch: :func:`safehub.hub.get_dir` (``set_dir``, ``$TORCH_HOME/hub``,
``$XDG_CACHE_HOME/torch/hub``, ``~/.cache/torch/hub``); safehub's own cache is its
``safehub/`` subfolder.

Hugging Face, as ``huggingface_hub`` resolves it: ``$HF_HUB_CACHE``, else the legacy
``$HUGGINGFACE_HUB_CACHE``, else ``$HF_HOME/hub``, else
``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub``. A set
``$TRANSFORMERS_CACHE`` (older transformers releases) is audited too.
"""

from __future__ import annotations

import os

__all__ = ["default_roots", "hf_hub_cache", "torch_hub_dir"]


def torch_hub_dir() -> str:
    """torch's hub directory, by torch.hub's rules."""
    from safehub._fetch.location import get_dir

    return get_dir()


def hf_hub_cache() -> str:
    """The Hugging Face hub cache, by huggingface_hub's rules."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        value = os.environ.get(var)
        if value:
            return os.path.expanduser(value)
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return os.path.join(os.path.expanduser(home), "hub")


def default_roots() -> list[str]:
    """The caches ``safehub audit`` looks at when given no paths (existing or not)."""
    roots = [torch_hub_dir(), hf_hub_cache()]
    legacy = os.environ.get("TRANSFORMERS_CACHE")
    if legacy:
        roots.append(os.path.expanduser(legacy))
    unique: list[str] = []
    for root in roots:
        if os.path.abspath(root) not in {os.path.abspath(r) for r in unique}:
            unique.append(root)
    return unique
