"""Walking folders the way every layout does: sorted, never following links."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from safehub._tree import walk

__all__ = ["Entry", "walk_files"]


@dataclass(frozen=True)
class Entry:
    """One thing found below a root: ``rel`` is the POSIX path relative to it."""

    path: str
    rel: str
    kind: str  # "file", "link" or "special"
    size: int = 0


def walk_files(root: str, prune: Callable[[str, str], bool] | None = None) -> Iterator[Entry]:
    """Every non-folder entry below ``root``, in a stable order. Folders are entered
    unless they are links or ``prune(rel, name)`` says so; links to folders are reported
    as links."""
    for dirpath, dirnames, filenames in walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/")
        dirnames.sort()
        kept = []
        for name in dirnames:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                yield Entry(full, rel, "link")
            elif prune is None or not prune(rel, name):
                kept.append(name)
        dirnames[:] = kept
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            rel = f"{rel_dir}/{name}" if rel_dir else name
            try:
                st = os.lstat(full)
            except OSError:
                continue  # removed while walking
            if stat.S_ISLNK(st.st_mode):
                yield Entry(full, rel, "link")
            elif stat.S_ISREG(st.st_mode):
                yield Entry(full, rel, "file", st.st_size)
            else:
                yield Entry(full, rel, "special")
