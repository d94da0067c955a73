"""Local paths as the policy decides on them: canonical, resolved real paths.

A ``path:`` signature scope must cover a folder however it is spelled: ``//D/x``,
``/D/./x``, ``/D/y/../x`` or a symlink ``/D/alias -> /D/x`` all name the same folder,
and the code that runs is the code in that folder. So both sides are resolved with
``os.path.realpath`` before matching: the candidate entirely, and the pattern up to
its first glob character (the fixed part is a real folder, or the path it would be).

The spelling as given matters too: a symlink ``/D/models/evil -> /D/elsewhere/evil``
dropped under a scope ``/D/models/*`` resolves outside it, yet it is what the user
named. So a path is in scope when EITHER its normalised spelling (absolute, ``.`` and
``..`` folded, no symlink resolution) OR its real path matches: fail closed.
"""

from __future__ import annotations

import fnmatch
import glob
import os

__all__ = ["canonical_path", "path_scope_matches"]

_GLOB_CHARS = frozenset("*?[")


def canonical_path(path: str | os.PathLike[str]) -> str:
    """The absolute, symlink-free, normalised form of ``path`` (it need not exist)."""
    return os.path.realpath(os.path.abspath(os.fspath(path)))


def _canonical_pattern(pattern: str) -> str:
    """``pattern`` with its fixed leading folders resolved; the glob part kept as written."""
    parts = os.path.abspath(pattern).split(os.sep)
    cut = next((i for i, part in enumerate(parts) if _GLOB_CHARS & set(part)), len(parts))
    fixed = os.sep.join(parts[:cut]) or os.sep
    rest = parts[cut:]
    real = glob.escape(canonical_path(fixed))
    return os.path.join(real, *rest) if rest else real


def _spelled(path: str | os.PathLike[str]) -> str:
    """``path`` absolute and normalised as written (``//``, ``.``, ``..`` folded; no
    symlink resolved)."""
    text = os.path.normpath(os.path.abspath(os.fspath(path)))
    return "/" + text.lstrip("/") if text.startswith("//") else text


def path_scope_matches(pattern: str, candidate: str | os.PathLike[str]) -> bool:
    """Whether the local path ``candidate`` falls under the ``path:`` glob ``pattern``:
    its spelling against the pattern as written, or its real path against the pattern's
    real form (``*`` may cross ``/``, as in fnmatch). ``pattern`` should be absolute
    (the policy anchors relative scopes to its own folder)."""
    if fnmatch.fnmatchcase(_spelled(candidate), _spelled(pattern)):
        return True
    return fnmatch.fnmatchcase(canonical_path(candidate), _canonical_pattern(pattern))
