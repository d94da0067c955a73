"""The on-disk cache under ``<hub_dir>/safehub`` and the metadata records in it.

Layout (``<root>`` is ``<hub_dir>/safehub`` unless the caller chose another)::

    <root>/files/<k[:2]>/<k>/<name>       a downloaded file, read-only; k = sha256(url)
    <root>/files/<k[:2]>/<k>.json         its record: url, sha256, size, time, ...
    <root>/repos/<owner>/<name>/<commit>/ an extracted checkout, files and dirs read-only
    <root>/repos/<owner>/<name>/<commit>.json   its record: ref, commit, archive and
                                                tree digests, every file's digest
    <root>/locks/<entry>.lock             per-entry inter-process locks
    <root>/tmp/<entry>.<pid>.<random>...  work in progress (downloads, extractions)

Files are keyed by canonical URL (two URLs with the same basename never collide;
two spellings of one URL share one entry). Checkouts are keyed by the casefolded
``owner/name`` (GitHub names are case-insensitive): ``Owner/Repo`` and
``owner/repo`` are one folder; the record keeps the API's spelling. An entry
exists only when its record does: a record is written last, with an atomic
rename, so a crash at any point leaves either a complete entry or nothing that
is ever served. Records carry what ``safehub audit`` needs to detect tampering.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from safehub._tree import remove_tree as _remove
from safehub._tree import walk

__all__ = [
    "RECORD_SCHEMA",
    "CacheLayout",
    "FileRecord",
    "RepoRecord",
    "file_name_for",
    "fsync_dir",
    "hash_tree",
    "now_iso",
    "read_record",
    "remove_tree",
    "tree_digest",
    "url_key",
    "write_json_atomic",
]

RECORD_SCHEMA = 1

FileDigests = dict[str, tuple[str, int]]  # relative path -> (sha256, size)


def url_key(url: str) -> str:
    """The cache key of a URL (its canonical form, see :mod:`safehub._policy.urls`)."""
    from safehub._policy.urls import canonical_url
    from safehub.errors import InvalidIdentifier

    # A malformed URL is never fetched (the fetch layer only uses canonical URLs), but a
    # record naming one (tampered) still needs a key for the audit to compare.
    with contextlib.suppress(InvalidIdentifier):
        url = canonical_url(url)
    return hashlib.sha256(url.encode("utf-8")).hexdigest()


def file_name_for(url: str) -> str:
    """A safe local name for the file a URL names (its basename, sanitized)."""
    base = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    clean = "".join(c if c.isalnum() or c in "._-+" else "_" for c in base).lstrip(".")
    return clean[:200] or "download"


def now_iso() -> str:
    """The current time, UTC, ISO 8601 (seconds)."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def tree_digest(files: Mapping[str, tuple[str, int]]) -> str:
    """One digest for a whole tree: over every file's path, size and SHA-256, sorted."""
    h = hashlib.sha256()
    for path in sorted(files):
        digest, size = files[path]
        h.update(f"{digest}  {size}  {path}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _record_json(record: FileRecord | RepoRecord) -> dict[str, Any]:
    """A record as written: no ``provenance`` key where nothing came from elsewhere."""
    out = asdict(record)
    if not record.provenance:
        del out["provenance"]
    return out


@dataclass(frozen=True)
class FileRecord:
    """What was downloaded from where, and its digest."""

    url: str
    name: str
    sha256: str
    size: int
    time: str
    final_url: str = ""
    repo: str | None = None
    hops: tuple[str, ...] = ()  # the redirect hops the bytes came through, re-decided on a hit
    kind: str = "file"
    schema_version: int = RECORD_SCHEMA
    # Set when the bytes came from elsewhere than the network (torch.hub's checkpoints/):
    # where from, and which check vouched for them (see safehub._fetch.torch_cache).
    provenance: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The record as written (no ``provenance`` key for plain downloads)."""
        return _record_json(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FileRecord:
        """Parse a record; raises ValueError, KeyError or TypeError when malformed."""
        if data.get("kind") != "file" or data.get("schema_version") != RECORD_SCHEMA:
            raise ValueError("not a file record")
        return cls(url=str(data["url"]), name=str(data["name"]), sha256=str(data["sha256"]),
                   size=int(data["size"]), time=str(data["time"]),
                   final_url=str(data.get("final_url", "")),
                   repo=None if data.get("repo") is None else str(data["repo"]),
                   hops=tuple(str(h) for h in data.get("hops", ())),
                   provenance=_str_dict(data.get("provenance", {})))


def _str_dict(value: object) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError("provenance is not an object of strings")
    return dict(value)


@dataclass(frozen=True)
class RepoRecord:
    """Which commit a checkout is, where it came from, and every file's digest."""

    source: str
    api: str
    owner: str
    name: str
    ref: str  # the ref that was asked for ("" for the default branch)
    commit: str
    archive_sha256: str
    archive_size: int
    tree_sha256: str
    time: str
    files: FileDigests = field(default_factory=dict)
    archive_url: str = ""  # the archive URL requested
    hops: tuple[str, ...] = ()  # the redirect hops the archive came through, re-decided on a hit
    in_repo: bool = False  # the commit is the repository's own, not only a fork's (SH307)
    kind: str = "repo"
    schema_version: int = RECORD_SCHEMA
    # Set when the files came from torch.hub's folder, not an archive (torch_repos).
    provenance: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The record as written (no ``provenance`` key for downloaded checkouts)."""
        return _record_json(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RepoRecord:
        """Parse a record; raises ValueError, KeyError or TypeError when malformed."""
        if data.get("kind") != "repo" or data.get("schema_version") != RECORD_SCHEMA:
            raise ValueError("not a repo record")
        files = {str(k): (str(v[0]), int(v[1])) for k, v in dict(data["files"]).items()}
        return cls(source=str(data["source"]), api=str(data["api"]), owner=str(data["owner"]),
                   name=str(data["name"]), ref=str(data["ref"]), commit=str(data["commit"]),
                   archive_sha256=str(data["archive_sha256"]),
                   archive_size=int(data["archive_size"]),
                   tree_sha256=str(data["tree_sha256"]), time=str(data["time"]), files=files,
                   archive_url=str(data.get("archive_url", "")),
                   hops=tuple(str(h) for h in data.get("hops", ())),
                   in_repo=data.get("in_repo") is True,
                   provenance=_str_dict(data.get("provenance", {})))


def read_record(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when there is no such file.

    Raises ValueError for a record that exists but cannot be read as one.
    """
    try:
        with open(path, "rb") as fh:
            data = json.loads(fh.read(64 << 20).decode("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"unreadable record {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"record {path} is not a JSON object")
    return data


def write_json_atomic(path: Path, data: object) -> None:
    """Write JSON to ``path`` via a unique temporary file, fsync, rename, fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    payload = asdict(data) if is_dataclass(data) and not isinstance(data, type) else data
    try:
        with open(tmp, "x", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=1, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_tree(path: Path) -> None:
    """Remove a file or folder, including read-only folders of a checkout."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
        return
    if not path.exists():
        return
    for dirpath, dirnames, _ in walk(path):
        for d in dirnames:
            full = os.path.join(dirpath, d)
            if not os.path.islink(full):
                os.chmod(full, 0o700)
    os.chmod(path, 0o700)
    _remove(path)


def hash_tree(root: Path, *, skip_top: frozenset[str] = frozenset()
              ) -> tuple[FileDigests, list[str]]:
    """Digests of every regular file under ``root``, and anything that is neither a
    regular file nor a folder (links, devices), which no checkout ever holds.
    ``skip_top``: names of folders directly under ``root`` left out (``.git``)."""
    files: FileDigests = {}
    odd: list[str] = []
    for dirpath, dirnames, filenames in walk(root):
        if skip_top and dirpath == os.fspath(root):
            dirnames[:] = [d for d in dirnames if not (
                d in skip_top and os.path.isdir(os.path.join(dirpath, d))
                and not os.path.islink(os.path.join(dirpath, d)))]
        for name in [*dirnames, *filenames]:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            st = os.lstat(full)
            if stat.S_ISDIR(st.st_mode):
                continue
            if not stat.S_ISREG(st.st_mode):
                odd.append(rel)
                continue
            h = hashlib.sha256()
            with open(full, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
            files[rel] = (h.hexdigest(), st.st_size)
    return files, odd


class CacheLayout:
    """Paths of the cache, and the housekeeping of its temporary area."""

    def __init__(self, root: Path):
        self.root = root
        self.tmp = root / "tmp"
        self.locks = root / "locks"
        self.files = root / "files"
        self.repos = root / "repos"

    def ensure(self) -> None:
        """Create the cache's folders."""
        for d in (self.tmp, self.locks, self.files, self.repos):
            d.mkdir(parents=True, exist_ok=True)

    # --- files ---------------------------------------------------------------------------

    def file_dir(self, url: str) -> Path:
        """The folder holding the file downloaded from ``url``."""
        key = url_key(url)
        return self.files / key[:2] / key

    def file_record(self, url: str) -> Path:
        """The record of the file downloaded from ``url``."""
        key = url_key(url)
        return self.files / key[:2] / f"{key}.json"

    def file_lock(self, url: str) -> Path:
        """The lock file guarding the entry of ``url``."""
        return self.locks / f"file-{url_key(url)}.lock"

    def file_tag(self, url: str) -> str:
        """The prefix of temporary files for the entry of ``url``."""
        return f"file-{url_key(url)[:32]}"

    # --- repos ---------------------------------------------------------------------------

    def _repo_folder(self, owner: str, name: str) -> Path:
        from safehub._policy.repo_id import RepoId

        rid = RepoId(owner, name)  # validated: no separator or dot segment reaches a path
        return self.repos / rid.owner_key / rid.name_key

    def repo_dir(self, owner: str, name: str, commit: str) -> Path:
        """The checkout of ``owner/name@commit``."""
        return self._repo_folder(owner, name) / commit

    def repo_record(self, owner: str, name: str, commit: str) -> Path:
        """The record of that checkout."""
        return self._repo_folder(owner, name) / f"{commit}.json"

    def repo_records(self, owner: str, name: str) -> list[Path]:
        """Every record of ``owner/name`` (any commit)."""
        folder = self._repo_folder(owner, name)
        return sorted(folder.glob("*.json")) if folder.is_dir() else []

    def repo_lock(self, owner: str, name: str, commit: str) -> Path:
        """The lock file guarding that checkout."""
        folder = self._repo_folder(owner, name)
        return self.locks / f"repo-{folder.parent.name}-{folder.name}-{commit}.lock"

    def repo_tag(self, owner: str, name: str, commit: str) -> str:
        """The prefix of temporary files for that checkout."""
        key = f"{owner}/{name}".casefold()
        return f"repo-{hashlib.sha256(f'{key}@{commit}'.encode()).hexdigest()[:32]}"

    # --- temporary area ------------------------------------------------------------------

    def new_tmp(self, tag: str, suffix: str) -> Path:
        """A fresh, unique path in the temporary area (nothing is created)."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        return self.tmp / f"{tag}.{os.getpid()}.{uuid.uuid4().hex}{suffix}"

    def clean_stale(self, tag: str) -> None:
        """Remove leftovers of dead writers of an entry (the caller holds its lock)."""
        if not self.tmp.is_dir():
            return
        for leftover in self.tmp.glob(f"{tag}.*"):
            remove_tree(leftover)

    def __repr__(self) -> str:
        return f"CacheLayout({str(self.root)!r})"

