"""torch.hub's repository folders as a source for safehub's checkout cache, when verifiable.

``torch.hub.load("owner/name:ref", ...)`` extracts the archive to
``<hub_dir>/<owner>_<name>_<ref>/`` (``/`` in the ref becomes ``_``; no ref: ``main``,
else ``master``) and records nothing: the folder name says which *ref* it was, not which
commit, and nothing says its files are still the ones downloaded. So a folder is used
only where its content can be verified against a digest safehub trusts: a lockfile entry
for the repo and ref, whose commit is the one asked for and whose ``tree_sha256`` (over
every file's path, size and SHA-256) the folder's files match exactly. The files are
copied into a private temporary tree while they are hashed (the bytes hashed are the
bytes installed), ``__pycache__`` folders that torch's in-place import wrote are left
out, and a link or special file refuses the folder.

Without such a lockfile entry the folder is not used: offline that is the error
(SH542) naming how to fill safehub's cache instead; online the archive is downloaded.
A folder whose files differ from the entry is refused offline (SH542) and passed over
online. The checkout installed from a verified folder is the same as a downloaded one,
its record's ``provenance`` naming the folder and the lockfile that vouched.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from safehub._fetch.cache import FileDigests, now_iso, tree_digest
from safehub._fetch.lockfile import LockedRepo
from safehub.errors import FetchError, IntegrityError

__all__ = ["ImportedTree", "LocalTree", "repo_folders", "repo_source", "unverified"]

log = logging.getLogger("safehub.fetch")

SOURCE = "torch.hub repository folder"


@dataclass(frozen=True)
class ImportedTree:
    """A verified tree copied into the temporary folder, and where it came from."""

    files: FileDigests
    tree_sha256: str
    archive_sha256: str
    provenance: dict[str, str]


# Fills the given (absent) folder with a verified tree; None when it has nothing usable.
LocalTree = Callable[[Path], "ImportedTree | None"]


def repo_folders(hub_dir: Path, owner: str, name: str, ref: str | None,
                 commit: str | None) -> list[Path]:
    """The folders torch.hub would have used for ``owner/name`` at ``ref`` (or at the
    commit itself), that exist as real folders."""
    refs = [ref] if ref else ["main", "master"]
    if commit:
        refs.append(commit)
    found = []
    for r in dict.fromkeys(refs):
        folder = hub_dir / f"{owner}_{name}_{r.replace('/', '_')}"
        if folder.is_dir() and not folder.is_symlink():
            found.append(folder)
    return found


def repo_source(folders: list[Path], *, repo: str, ref: str | None, commit: str,
                locked: LockedRepo | None, lockfile: str, offline: bool) -> LocalTree | None:
    """A :data:`LocalTree` over torch.hub's folders for ``repo``; None when there are none."""
    if not folders:
        return None
    if locked is None or locked.commit != commit:
        refusal = unverified(folders[0], repo=repo, ref=ref, commit=commit)

        def refuse(_tree: Path) -> ImportedTree | None:
            if offline:
                raise refusal
            log.info("%s; downloading the archive", refusal.message)
            return None
        return refuse

    def verify(tree: Path) -> ImportedTree | None:
        problems = []
        for folder in folders:
            try:
                files = _copy_tree(folder, tree)
            except _Unusable as exc:
                problems.append(f"{folder}: {exc}")
                continue
            digest = tree_digest(files)
            if digest == locked.tree_sha256:
                log.info("imported %s@%s from %s (tree sha256 %s, as %s)", repo, commit,
                         folder, digest, lockfile)
                return ImportedTree(files, digest, locked.archive_sha256, {
                    "source": SOURCE, "path": str(folder),
                    "vouched_by": f"lockfile {lockfile}: {repo_key(locked)} commit "
                    f"{commit} tree_sha256 {locked.tree_sha256}",
                    "archive": "not seen: archive_sha256 is the lockfile's",
                    "imported": now_iso()})
            problems.append(f"{folder}: its files' tree sha256 is {digest}, the lockfile "
                            f"says {locked.tree_sha256}")
        message = (f"SH542 torch-repo-unverified: torch.hub's copy of {repo}@{commit} does "
                   f"not match {lockfile}: {'; '.join(problems)}; it was not imported")
        if offline:
            raise IntegrityError(message, subject=str(folders[0]),
                                 fix="find out what changed it (torch.hub's import writes only "
                                 "__pycache__), delete it, and run online once to fill "
                                 "safehub's cache; then SAFEHUB_OFFLINE=1 works")
        log.warning("%s; downloading the archive instead", message)
        return None
    return verify


def unverified(folder: Path, *, repo: str, ref: str | None, commit: str | None
               ) -> FetchError:
    """The offline refusal of a torch.hub folder nothing verifies, with how to fill
    safehub's cache instead."""
    what = f"{repo}:{ref}" if ref else repo
    at = f"commit {commit}" if commit else "a commit (the folder name is a ref)"
    return FetchError(
        f"offline: {what} is not in safehub's cache; SH542 torch-repo-unverified: torch.hub's "
        f"folder {folder} holds it, but nothing ties its files to {at}: no lockfile entry "
        "names that commit and the digest of its files",
        subject=str(folder),
        fix=f"run online once to fill safehub's cache (`safehub lock {what}` also records "
        "the digests; or one load), then work offline with SAFEHUB_OFFLINE=1")


def repo_key(locked: LockedRepo) -> str:
    return f"{locked.repo}:{locked.ref}" if locked.ref else locked.repo


class _Unusable(Exception):
    """The folder holds something no checkout holds."""


def _copy_tree(src: Path, dst: Path) -> FileDigests:
    """Copy every regular file of ``src`` (but ``__pycache__``) to ``dst``, hashing the
    bytes as they are written. ``dst`` is emptied first."""
    from safehub._fetch.cache import remove_tree

    remove_tree(dst)
    dst.mkdir(mode=0o700)
    files: FileDigests = {}
    for dirpath, dirnames, filenames in os.walk(src, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        rel_dir = os.path.relpath(dirpath, src)
        for d in dirnames:
            full = os.path.join(dirpath, d)
            if not stat.S_ISDIR(os.lstat(full).st_mode):
                raise _Unusable(f"{os.path.join(rel_dir, d)} is a link or special file")
            os.mkdir(dst / rel_dir / d, 0o700)
        for name in sorted(filenames):
            rel = os.path.normpath(os.path.join(rel_dir, name)).replace(os.sep, "/")
            try:
                fd = os.open(os.path.join(dirpath, name),
                             os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as exc:
                raise _Unusable(f"{rel} cannot be read as a plain file ({exc.strerror})") from exc
            with os.fdopen(fd, "rb") as fh:
                if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                    raise _Unusable(f"{rel} is not a regular file")
                h = hashlib.sha256()
                size = 0
                with open(dst / rel, "xb") as out:
                    while chunk := fh.read(1 << 20):
                        h.update(chunk)
                        out.write(chunk)
                        size += len(chunk)
            files[rel] = (h.hexdigest(), size)
    return files
