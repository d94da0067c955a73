"""Walking a model folder without following links, and opening its files beneath it.

Every directory is opened relative to its parent with ``O_NOFOLLOW``, and every file
the same way, so a symlink swapped in after the walk is refused rather than followed
out of the model. Nothing may be a link, the model path itself included (as in
model_signing): :func:`walk` lists such entries as unsafe.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from safehub._signing.manifest import SINGLE_FILE, UnsafeManifestPath, check_relpath, plain_name

__all__ = ["RootDir", "Tree", "TreeError", "walk"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO planted in the model must not hang the verifier.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class TreeError(OSError):
    """The model path is missing or is neither a file nor a folder."""


@dataclass(frozen=True)
class Tree:
    """What a walk found.

    ``files`` maps model-relative POSIX paths to their size (``.`` alone for a
    single-file model); ``unsafe`` lists entries refused with the reason (symlinks,
    special files, undecodable names); ``unreadable`` folders that could not be listed.
    """

    root: Path
    single_file: bool
    files: Mapping[str, int] = field(default_factory=dict)
    unsafe: tuple[tuple[str, str], ...] = ()
    unreadable: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "files", MappingProxyType(dict(self.files)))


def _open_dir_beneath(root_fd: int, rel: str) -> int:
    fd = os.dup(root_fd)
    if not rel:
        return fd
    try:
        for part in rel.split("/"):
            nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


class RootDir:
    """The model root, held open so every file is opened beneath the same folder.

    Use as a context manager; :meth:`open` returns a read-only descriptor for a
    regular file, never following a link. For a single-file model, ``.`` is the file
    the caller named.
    """

    def __init__(self, root: Path, *, single_file: bool):
        self.root = root
        self.single_file = single_file
        self._fd: int | None = None

    def __enter__(self) -> RootDir:
        if not self.single_file:
            self._fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def open(self, rel: str) -> int:
        """Open ``rel`` for reading; ``OSError`` when missing, a link or not a regular file."""
        if self.single_file:
            if rel != SINGLE_FILE:
                raise FileNotFoundError(rel)
            fd = os.open(self.root, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        else:
            if self._fd is None:
                raise ValueError("RootDir used outside its context")
            try:
                check_relpath(rel)
            except UnsafeManifestPath as exc:
                raise PermissionError(f"refusing path {rel!r}: {exc}") from None
            parent, _, name = rel.rpartition("/")
            dir_fd = _open_dir_beneath(self._fd, parent)
            try:
                fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
            finally:
                os.close(dir_fd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise PermissionError(f"{rel!r} is not a regular file")
        return fd


def _decodable(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return plain_name(name)  # a backslash is a plain character, but never a way out


def walk(root: Path, *, skip_top: Collection[str] = ()) -> Tree:
    """List every file under ``root`` (or ``root`` itself if it is a file).

    Names in ``skip_top`` are left out at the top level only (the standard's ``.git``
    and friends): their files are not listed, but a symlink or special file among them
    is still refused, as model_signing refuses it (it checks every entry before asking
    whether it is ignored).
    """
    try:
        st = os.stat(root)
        # model_signing refuses a model path that is itself a symlink (it checks the path
        # before anything under it); so does verification, unless the caller hands over
        # the file it opened (open_files), which check_model honours.
        top: list[tuple[str, str]] = [(SINGLE_FILE, "the model path itself is a symlink")] \
            if os.path.islink(root) else []
    except FileNotFoundError:
        raise TreeError(f"model path not found: {root}") from None
    except OSError as exc:
        raise TreeError(f"cannot read the model path {root}: {exc.strerror}") from exc
    if stat.S_ISREG(st.st_mode):
        return Tree(root=root, single_file=True, files={SINGLE_FILE: st.st_size},
                    unsafe=tuple(top))
    if not stat.S_ISDIR(st.st_mode):
        raise TreeError(f"model path is neither a file nor a folder: {root}")

    files: dict[str, int] = {}
    unsafe: list[tuple[str, str]] = list(top)
    unreadable: list[tuple[str, str]] = []
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        # Folders still to list, as model-relative paths, and whether they are skipped
        # ones (whose files are not listed and whose unreadable folders do not count).
        pending: list[tuple[str, bool]] = [("", False)]
        while pending:
            rel_dir, skipped = pending.pop()
            try:
                dir_fd = _open_dir_beneath(root_fd, rel_dir)
            except OSError as exc:
                if not skipped:
                    unreadable.append((rel_dir, exc.strerror or str(exc)))
                continue
            try:
                with os.scandir(dir_fd) as it:
                    entries = sorted(it, key=lambda e: e.name)
                for entry in entries:
                    name = entry.name
                    rel = f"{rel_dir}/{name}" if rel_dir else name
                    inside = skipped or (not rel_dir and name in skip_top)
                    if not inside and not _decodable(name):
                        unsafe.append((rel, "the name is not valid UTF-8, or climbs out of the "
                                            "model where a backslash separates"))
                    elif entry.is_symlink():
                        unsafe.append((rel, "symlink"))
                    elif entry.is_dir(follow_symlinks=False):
                        pending.append((rel, inside))
                    elif inside:
                        if not entry.is_file(follow_symlinks=False):
                            unsafe.append((rel, "special file (FIFO, socket or device)"))
                    elif entry.is_file(follow_symlinks=False):
                        files[rel] = entry.stat(follow_symlinks=False).st_size
                    else:
                        unsafe.append((rel, "special file (FIFO, socket or device)"))
            except OSError as exc:
                if not skipped:
                    unreadable.append((rel_dir, exc.strerror or str(exc)))
            finally:
                os.close(dir_fd)
    finally:
        os.close(root_fd)
    return Tree(root=root, single_file=False, files=files, unsafe=tuple(sorted(unsafe)),
                unreadable=tuple(sorted(unreadable)))
