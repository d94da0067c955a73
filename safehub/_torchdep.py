"""torch is an optional dependency: ``pip install safehub`` scans, audits, verifies and checks
policies without it (CI and pre-commit stay small); loading, converting and enforcing need
``safehub[torch]``.

The check looks for torch without importing it, so commands that need torch fail at once,
in one line naming the extra, instead of deep inside a sandbox start-up.
"""

from __future__ import annotations

import importlib.util

from safehub.errors import SafehubError

__all__ = ["EXTRA", "TorchMissing", "require_torch", "torch_available"]

EXTRA = "safehub[torch]"


class TorchMissing(SafehubError):
    """A feature that runs PyTorch was used where torch is not installed."""


def torch_available() -> bool:
    """Whether ``import torch`` can succeed here (torch is not imported)."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def require_torch(feature: str) -> None:
    """Raise :class:`TorchMissing` naming the extra when torch is not installed."""
    if not torch_available():
        raise TorchMissing(
            f"{feature} needs PyTorch, which is not installed",
            fix=f"pip install '{EXTRA}' (scan, audit, verify and policy work without it)")
