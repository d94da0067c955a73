"""Which layout a root has, and the targets it holds.

A root is read as a Hugging Face cache (or one repo of it), as torch's hub directory,
as safehub's own cache, or as plain files, by what it contains (never by a flag that
could hide something), wherever the path points:

- at a layout's own folder (``HF_HOME/hub``, ``models--org--name``, torch's ``hub``,
  safehub's ``safehub``): that layout;
- above one (``HF_HOME``, ``TORCH_HOME``, ``~/.cache``, ``/``): plain files, and every
  layout found below is audited as that layout (the walk does not enter it as plain);
- inside one (a snapshot, a blob, ``hub/checkpoints``, one checkpoint file): the
  enclosing layout is discovered and only what lies under the path is kept, so a blob
  or a ``-<hash>.pth`` checkpoint is checked against its recorded digest whichever
  path names it.
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


def layout_of(root: str, *, torch_hub: str | None = None, above: bool = False) -> str:
    """``huggingface``, ``torch-hub``, ``safehub-cache`` or ``plain``. ``above``: ``root``
    is a folder above the path being audited, so only torch.hub's own markers count."""
    if not os.path.isdir(root):
        return "plain"
    if is_hf_repo(root) or is_hf_cache(root):
        return "huggingface"
    if torch_hub is not None and _same(root, torch_hub):
        return "torch-hub"
    if is_torch_hub_dir(root, by_checkouts=not above):
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
        enclosing = enclosing_layout(root, torch_hub=torch_hub)
        part = None
        if enclosing is not None:
            layout, base = enclosing
            part = _within(_discover_layout(layout, base, ctx, torch_hub), root)
        if part is None or not (part.files or part.repos):
            # Not the layout's own content (a folder beside its repos): as itself.
            part = _discover_tree(root, ctx, torch_hub)
        found.extend(part)
    return found


def enclosing_layout(path: str, *, torch_hub: str | None = None) -> tuple[str, str] | None:
    """``(layout, folder)`` of the nearest cache layout strictly above ``path``, or None.

    Folders are compared as the path spells them (links are not resolved: a path that
    reaches a cache through a link is read where it points only if it names the cache
    folder itself or goes through it).
    """
    absolute = os.path.abspath(path)
    current = os.path.dirname(absolute)
    while True:
        if is_hf_repo(current):
            return "huggingface", current
        # A Hugging Face cache folder owns only its repo folders: what else lies in it is
        # audited as itself, so only a repo folder encloses.
        layout = layout_of(current, torch_hub=torch_hub, above=True)
        if layout in ("torch-hub", "safehub-cache"):
            return layout, current
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent


def _discover_layout(layout: str, root: str, ctx: Context,
                     torch_hub: str | None = None) -> Discovery:
    if layout == "huggingface":
        return discover_hf_cache(root, ctx,
                                 other=lambda path: _discover_tree(path, ctx, torch_hub))
    if layout == "torch-hub":
        return discover_torch_hub(root, ctx)
    return discover_safehub_cache(root, ctx)


def _discover_tree(root: str, ctx: Context, torch_hub: str | None) -> Discovery:
    """``root`` as its layout, or as plain files with every layout below it as its own."""
    layout = layout_of(root, torch_hub=torch_hub)
    if layout != "plain":
        return _discover_layout(layout, root, ctx, torch_hub)
    inner: list[str] = []

    def prune(rel: str, name: str) -> bool:
        folder = os.path.join(root, rel)
        if layout_of(folder, torch_hub=torch_hub) != "plain":
            inner.append(folder)
            return True
        return False

    found = plain_file_targets(root, Provenance("local"), prune=prune)
    found.caches.append(("plain", root))
    # A folder (or file) the user named is a unit of trust for path-scoped signature
    # rules; it is reported only when something is wrong with it.
    found.repos.append(RepoTarget(root, Provenance("local"), kind="folder"
                                  if os.path.isdir(root) else "file"))
    for folder in inner:
        found.extend(_discover_layout(layout_of(folder, torch_hub=torch_hub), folder, ctx,
                                      torch_hub))
    return found


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _within(found: Discovery, root: str) -> Discovery:
    """What of a layout's discovery lies under ``root`` (or is the file ``root`` names,
    such as a blob behind a snapshot link)."""
    absolute = os.path.abspath(root)
    real = os.path.realpath(root)
    kept = Discovery(caches=list(found.caches))

    def mine(path: str) -> bool:
        return _under(os.path.abspath(path), absolute)

    # A blob is reported as the snapshot entry that links to it: keep entries whose
    # bytes lie under the named path too.
    kept.files = [t for t in found.files if mine(t.path) or _under(t.real, real)]
    kept.repos = [r for r in found.repos if mine(r.path)]
    kept.skipped = [s for s in found.skipped if mine(s.path)]
    return kept
