"""Walking, copying and removing folder trees without recursion, and finding hard links that
lead out of a tree.

A repository can be any shape: a tree 1,100 folders deep is a valid git checkout, and on
Python 3.11 ``os.walk``, ``shutil.copytree`` and ``shutil.rmtree`` recurse once per level,
so such a tree raised RecursionError out of safehub. These versions keep an explicit stack.

A hard link is the same file under two names. Landlock grants access by path, so a file in
a repository folder hard-linked to a file elsewhere (a key, a token) is readable through the
repository's grant. :func:`links_leaving` finds regular files whose links are not all inside
the tree.

:func:`write_atomic` writes a file under a temporary name beside it and renames it into
place, so a failure never leaves a partial file under the final name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from safehub._namedfile import check_replaceable
from safehub.errors import SafehubError

__all__ = ["copy_tree", "links_leaving", "remove_tree", "tree_size", "walk", "write_atomic"]


def walk(top: str | os.PathLike[str], *, topdown: bool = True,
         onerror: Callable[[OSError], None] | None = None
         ) -> Iterator[tuple[str, list[str], list[str]]]:
    """``os.walk(top, topdown, onerror, followlinks=False)`` with an explicit stack.

    With ``topdown`` the caller may prune ``dirnames`` in place, as with ``os.walk``.
    Links to folders are listed in ``filenames``' neighbour ``dirnames`` as os.walk does,
    but never entered.
    """
    root = os.fspath(top)
    stack: list[tuple[str, bool]] = [(root, False)]
    pending: list[tuple[str, list[str], list[str]]] = []  # bottom-up: emitted on the way out
    while stack:
        path, leaving = stack.pop()
        if leaving:
            yield pending.pop()
            continue
        try:
            entries = list(os.scandir(path))
        except OSError as exc:
            if onerror is not None:
                onerror(exc)
            continue
        dirs: list[str] = []
        files: list[str] = []
        for entry in entries:
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            (dirs if is_dir else files).append(entry.name)
        if topdown:
            yield path, dirs, files
        else:
            pending.append((path, dirs, files))
            stack.append((path, True))
        for name in reversed(dirs):
            child = os.path.join(path, name)
            if not os.path.islink(child):
                stack.append((child, False))


def tree_size(root: str | os.PathLike[str], *, leave_out: frozenset[str] = frozenset(),
              everywhere: bool = False) -> int:
    """Bytes of the regular files under ``root`` (lstat only, nothing read), leaving out
    the folders named in ``leave_out`` at the top (or at every level: ``everywhere``)."""
    top = os.fspath(root)
    total = 0
    for folder, dirs, files in walk(top):
        if everywhere or folder == top:
            dirs[:] = [d for d in dirs if d not in leave_out]
        for name in files:
            with contextlib.suppress(OSError):
                info = os.lstat(os.path.join(folder, name))
                if stat.S_ISREG(info.st_mode):
                    total += info.st_size
    return total


def copy_tree(src: str | os.PathLike[str], dst: str | os.PathLike[str], *,
              ignore: Callable[[str, list[str]], set[str]] | None = None,
              copy_function: Callable[[str, str], object] = shutil.copy2) -> None:
    """``shutil.copytree(src, dst, symlinks=True, ignore=..., copy_function=...)``, iterative.

    Links are copied as links; other special files are skipped.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    os.makedirs(dst)
    for directory, dirs, files in walk(src):
        rel = os.path.relpath(directory, src)
        target = dst if rel == "." else os.path.join(dst, rel)
        ignored = ignore(directory, dirs + files) if ignore else set()
        dirs[:] = [d for d in dirs if d not in ignored]
        for name in dirs:
            source = os.path.join(directory, name)
            if os.path.islink(source):
                os.symlink(os.readlink(source), os.path.join(target, name))
            else:
                os.mkdir(os.path.join(target, name))
        for name in files:
            if name in ignored:
                continue
            source = os.path.join(directory, name)
            st = os.lstat(source)
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(source), os.path.join(target, name))
            elif stat.S_ISREG(st.st_mode):
                copy_function(source, os.path.join(target, name))
        with contextlib.suppress(OSError):
            shutil.copystat(directory, target)


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Remove ``path`` and everything under it, bottom-up, without following links; folders
    made unwritable (a read-only copy) are made writable first. Best effort: what cannot be
    removed is left."""
    root = os.fspath(path)
    with contextlib.suppress(OSError):
        if os.path.islink(root) or not os.path.isdir(root):
            os.unlink(root)
            return
    # Folders are opened up top-down before they are listed: one made without read
    # permission (sandboxed code cannot change a mode, so it keeps the one it was made
    # with) could not be listed, and what it holds would be left.
    stack = [root]
    while stack:
        directory = stack.pop()
        with contextlib.suppress(OSError):
            os.chmod(directory, 0o700)
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    for directory, dirs, files in walk(root, topdown=False):
        for name in files + dirs:
            target = os.path.join(directory, name)
            with contextlib.suppress(OSError):
                if os.path.islink(target) or not os.path.isdir(target):
                    os.unlink(target)
                else:
                    os.rmdir(target)
    with contextlib.suppress(OSError):
        os.rmdir(root)


def links_leaving(root: str | os.PathLike[str], *, limit: int = 1_000_000) -> list[Path]:
    """Regular files under ``root`` with a hard link outside it: files whose link count is
    higher than the number of their names inside the tree (at most ``limit`` files looked
    at; a tree with more is reported as its root)."""
    names: dict[tuple[int, int], list[str]] = {}
    counts: dict[tuple[int, int], int] = {}
    seen = 0
    for directory, _dirs, files in walk(root):
        for name in files:
            seen += 1
            if seen > limit:
                return [Path(root)]
            path = os.path.join(directory, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                names.setdefault(key, []).append(path)
                counts[key] = st.st_nlink
    return sorted(Path(paths[0]) for key, paths in names.items() if len(paths) < counts[key])


def write_atomic(path: Path, write: Callable[[BinaryIO, str], None], *,
                 failures: tuple[type[BaseException], ...] = (OSError,)) -> None:
    """Call ``write(file, temp_path)`` on a temporary file beside ``path``, then rename it
    into place; on any error nothing is left behind.

    Raises SafehubError when the file cannot be written (space, permissions, limits):
    for an OSError, or one of ``failures`` that ``write`` raises; and, before anything is
    written, when ``path`` is a device, FIFO, socket or folder (never replaced).
    """
    check_replaceable(path, what="output")
    folder = path.parent
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise SafehubError(f"cannot write here: {exc.strerror}", subject=str(path),
                           fix="choose a writable folder") from exc
    try:
        with os.fdopen(fd, "w+b") as fh:
            write(fh, tmp)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except failures as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise SafehubError(f"writing failed, nothing was written: {exc}", subject=str(path),
                           fix="check the free space and the file-size limit") from exc
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
