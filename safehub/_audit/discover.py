"""Which layout a root has, and the targets it holds.

A root is read as a Hugging Face cache (or one repo of it), as torch's hub directory,
as safehub's own cache, or as plain files, by what it contains (never by a flag that
could hide something): a folder that is none of these is audited as plain files.
"""

from __future__ import annotations

import os

from safehub._audit.context import Context
from safehub._audit.hf_layout import discover_hf_cache, is_hf_cache, is_hf_repo
from safehub._audit.model import Discovery, FileTarget, Provenance, RepoTarget
from safehub._audit.plain import plain_file_targets
from safehub._audit.safehub_layout import discover_safehub_cache, is_safehub_cache
from safehub._audit.torch_layout import discover_torch_hub, is_torch_hub_dir
from safehub.findings import Skipped

__all__ = ["discover", "layout_of"]


def layout_of(root: str, *, torch_hub: str | None = None) -> str:
    """``huggingface``, ``torch-hub``, ``safehub-cache`` or ``plain``."""
    if not os.path.isdir(root):
        return "plain"
    if is_hf_repo(root) or is_hf_cache(root):
        return "huggingface"
    if torch_hub is not None and _same(root, torch_hub):
        return "torch-hub"
    if is_torch_hub_dir(root):
        return "torch-hub"
    if is_safehub_cache(root) and os.path.basename(os.path.normpath(root)) == "safehub":
        return "safehub-cache"
    return "plain"


def _same(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def discover(roots: list[str], ctx: Context, *, defaults: bool,
             torch_hub: str | None = None) -> Discovery:
    """Targets under every root. Missing default caches are skipped; a missing path the
    user named is an unreadable target (the audit then exits 2, as ``scan`` does)."""
    found = Discovery()
    seen: set[str] = set()
    for root in roots:
        absolute = os.path.abspath(root)
        if absolute in seen:
            continue
        seen.add(absolute)
        if not os.path.lexists(root):
            if defaults:
                found.skipped.append(Skipped(root, "no cache here"))
            else:
                found.files.append(FileTarget(root, root, Provenance("local"), model_only=False,
                                              error="no such file or folder"))
            continue
        layout = layout_of(root, torch_hub=torch_hub)
        if layout == "huggingface":
            found.extend(discover_hf_cache(root, ctx))
        elif layout == "torch-hub":
            found.extend(discover_torch_hub(root, ctx))
        elif layout == "safehub-cache":
            found.extend(discover_safehub_cache(root, ctx))
        else:
            part = plain_file_targets(root, Provenance("local"))
            found.extend(part)
            found.caches.append(("plain", root))
            # A folder (or file) the user named is a unit of trust for path-scoped
            # signature rules; it is reported only when something is wrong with it.
            found.repos.append(RepoTarget(root, Provenance("local"), kind="folder"
                                          if os.path.isdir(root) else "file"))
    return found
