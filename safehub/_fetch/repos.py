"""The checkout cache: one extracted, read-only tree per ``owner/name@commit``.

A checkout is served only when its record exists and every file under it still
has the digest the record holds (no file added, removed, changed or turned into
a link): a tampered checkout is an :class:`~safehub.errors.IntegrityError`,
never silently used and never silently replaced. ``force_reload`` downloads the
archive again and replaces the checkout only once the new one is complete and
accepted; a failed refresh leaves the previous checkout as it was.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from safehub._fetch.archive import ArchiveLimits, extract_archive, seal_tree
from safehub._fetch.cache import (
    CacheLayout,
    RepoRecord,
    fsync_dir,
    hash_tree,
    now_iso,
    read_record,
    remove_tree,
    write_json_atomic,
)
from safehub._fetch.http import DownloadResult
from safehub._fetch.locks import entry_lock
from safehub._fetch.torch_repos import LocalTree
from safehub._policy.schema import SHA1_RE
from safehub.errors import FetchError, IntegrityError, InternalError

__all__ = ["Checkout", "RepoCache", "RepoSource"]

log = logging.getLogger("safehub.fetch")

ArchiveDownload = Callable[[BinaryIO], DownloadResult]
Accept = Callable[[RepoRecord], None]


@dataclass(frozen=True)
class RepoSource:
    """Where a checkout comes from: the API base, and how to download its archive."""

    api: str
    download: ArchiveDownload | None  # None: offline
    archive_url: str
    in_repo: bool = False  # the commit was established as the repository's own (not a fork's)


@dataclass(frozen=True)
class Checkout:
    """A verified checkout in the cache."""

    path: Path
    record: RepoRecord
    from_cache: bool


class RepoCache:
    """Commit-keyed checkouts under ``<root>/repos``."""

    def __init__(self, layout: CacheLayout, limits: ArchiveLimits):
        self.layout = layout
        self.limits = limits

    def obtain(self, owner: str, name: str, commit: str, *, ref: str, source: RepoSource,
               force_reload: bool, accept: Accept, local: LocalTree | None = None
               ) -> Checkout:
        """The verified checkout of ``commit``: from the cache, else downloaded.

        ``accept`` sees the record before the checkout is returned or installed and
        raises to refuse it (lockfile digests); a refused download is not installed.
        ``local`` is tried first on a miss, online or not (torch.hub's folder, see
        :mod:`safehub._fetch.torch_repos`).
        """
        layout = self.layout
        lock = layout.repo_lock(owner, name, commit)
        if not force_reload:
            with entry_lock(lock, shared=True):
                hit = self._load(owner, name, commit)
            if hit is not None:
                accept(hit.record)
                return hit
        what = f"{owner}/{name}@{commit}"
        if source.download is None and (local is None or force_reload):
            raise FetchError(
                f"offline: {what} is not in the cache" + (" (force_reload needs the network)"
                                                          if force_reload else ""),
                subject=str(layout.repo_dir(owner, name, commit)),
                fix=f"run once online to cache {what} (or unset SAFEHUB_OFFLINE / "
                "downloads.offline)")
        layout.ensure()
        with entry_lock(lock):
            tag = layout.repo_tag(owner, name, commit)
            layout.clean_stale(tag)
            if not force_reload:
                hit = self._load(owner, name, commit)
                if hit is not None:
                    accept(hit.record)
                    return hit
                if local is not None:
                    imported = self._import(owner, name, commit, ref, source, accept, tag, local)
                    if imported is not None:
                        return imported
            if source.download is None:
                raise FetchError(f"offline: {what} is not in the cache",
                                 subject=str(layout.repo_dir(owner, name, commit)),
                                 fix=f"run once online to cache {what} (or unset "
                                 "SAFEHUB_OFFLINE / downloads.offline)")
            return self._download(owner, name, commit, ref, source, accept, tag)

    def _import(self, owner: str, name: str, commit: str, ref: str, source: RepoSource,
                accept: Accept, tag: str, local: LocalTree) -> Checkout | None:
        tree = self.layout.new_tmp(tag, ".tree")
        try:
            got = local(tree)
            if got is None:
                return None
            record = RepoRecord(
                source="github", api=source.api, owner=owner, name=name, ref=ref,
                commit=commit, archive_sha256=got.archive_sha256, archive_size=0,
                tree_sha256=got.tree_sha256, time=now_iso(), files=got.files,
                provenance=dict(got.provenance), in_repo=source.in_repo)
            accept(record)
            self._install(tree, record, tag)
            return Checkout(self.layout.repo_dir(owner, name, commit), record, False)
        finally:
            remove_tree(tree)

    def _download(self, owner: str, name: str, commit: str, ref: str, source: RepoSource,
                  accept: Accept, tag: str) -> Checkout:
        if source.download is None:
            raise InternalError("repository download without a download source")
        layout = self.layout
        archive = layout.new_tmp(tag, ".archive")
        tree = layout.new_tmp(tag, ".tree")
        try:
            with open(archive, "xb") as fh:
                result = source.download(fh)
            extracted = extract_archive(archive, tree, self.limits, subject=source.archive_url)
            if SHA1_RE.fullmatch(extracted.comment) and extracted.comment != commit:
                raise IntegrityError(
                    f"the archive is of commit {extracted.comment}, not {commit}",
                    subject=source.archive_url,
                    fix="the server sent the wrong archive; check downloads.github_api")
            record = RepoRecord(
                source="github", api=source.api, owner=owner, name=name, ref=ref,
                commit=commit, archive_sha256=result.sha256, archive_size=result.size,
                tree_sha256=extracted.tree_sha256, time=now_iso(), files=extracted.files,
                archive_url=result.url, hops=result.hops, in_repo=source.in_repo)
            accept(record)
            self._install(tree, record, tag)
            log.info("cached %s/%s@%s (archive sha256 %s)", owner, name, commit, result.sha256)
            return Checkout(layout.repo_dir(owner, name, commit), record, False)
        finally:
            remove_tree(archive)
            remove_tree(tree)

    def _install(self, tree: Path, record: RepoRecord, tag: str) -> None:
        layout = self.layout
        final = layout.repo_dir(record.owner, record.name, record.commit)
        record_path = layout.repo_record(record.owner, record.name, record.commit)
        seal_tree(tree)
        os.chmod(tree, 0o700)  # moving a folder to another parent needs write access to it
        final.parent.mkdir(parents=True, exist_ok=True)
        old: Path | None = None
        # Record first out, last in: a crash in between leaves no record, hence no entry.
        record_path.unlink(missing_ok=True)
        if final.exists() or final.is_symlink():
            old = layout.new_tmp(tag, ".old")
            if final.is_dir() and not final.is_symlink():
                os.chmod(final, 0o700)
            os.rename(final, old)
        os.rename(tree, final)
        os.chmod(final, 0o555)
        write_json_atomic(record_path, record.to_json())
        fsync_dir(final.parent)
        if old is not None:
            remove_tree(old)

    def _load(self, owner: str, name: str, commit: str) -> Checkout | None:
        layout = self.layout
        record_path = layout.repo_record(owner, name, commit)
        final = layout.repo_dir(owner, name, commit)
        record = _read(record_path, final)
        if record is None or not final.is_dir() or final.is_symlink():
            return None
        if (f"{record.owner}/{record.name}".casefold(), record.commit) != (
                f"{owner}/{name}".casefold(), commit):
            raise _tampered(final, f"its record names {record.owner}/{record.name}@"
                            f"{record.commit}")
        files, odd = hash_tree(final)
        if odd:
            raise _tampered(final, f"it holds links or special files: {', '.join(odd[:5])}")
        if files != record.files:
            raise _tampered(final, _difference(record.files, files))
        return Checkout(final, record, True)

    def record(self, owner: str, name: str, commit: str) -> RepoRecord | None:
        """The record of a cached checkout, unverified (None when there is none or it is
        unreadable); :meth:`obtain` verifies the tree before serving it."""
        path = self.layout.repo_record(owner, name, commit)
        try:
            return _read(path, path.with_suffix(""))
        except IntegrityError:
            return None

    def mark_in_repo(self, owner: str, name: str, commit: str) -> None:
        """Note in a cached checkout's record that its commit was established as the
        repository's own (so later loads need no request for it)."""
        from dataclasses import replace

        lock = self.layout.repo_lock(owner, name, commit)
        self.layout.ensure()
        with entry_lock(lock):
            record = self.record(owner, name, commit)
            if record is not None and not record.in_repo:
                write_json_atomic(self.layout.repo_record(owner, name, commit),
                                  replace(record, in_repo=True))

    def records(self, owner: str, name: str) -> list[RepoRecord]:
        """Every readable record of ``owner/name``, newest first."""
        found = []
        for path in self.layout.repo_records(owner, name):
            try:
                record = _read(path, path.with_suffix(""))
            except IntegrityError:
                continue
            if record is not None:
                found.append(record)
        return sorted(found, key=lambda r: r.time, reverse=True)


def _read(record_path: Path, final: Path) -> RepoRecord | None:
    try:
        data = read_record(record_path)
        return None if data is None else RepoRecord.from_json(data)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise _tampered(final, f"its record {record_path} is unreadable ({exc})") from exc


def _tampered(path: Path, why: str) -> IntegrityError:
    return IntegrityError(
        f"SH400 cache-tampered: the cached checkout changed since it was downloaded: {why}",
        subject=str(path),
        fix="find out what changed it, then fetch again with force_reload=True (which "
        "replaces the checkout) or delete the folder and its .json record")


def _difference(expected: dict[str, tuple[str, int]], actual: dict[str, tuple[str, int]]
                ) -> str:
    added = sorted(set(actual) - set(expected))
    removed = sorted(set(expected) - set(actual))
    changed = sorted(p for p in set(actual) & set(expected) if actual[p] != expected[p])
    parts = []
    for label, items in (("changed", changed), ("added", added), ("removed", removed)):
        if items:
            parts.append(f"{label}: {', '.join(items[:5])}" + (" ..." if len(items) > 5 else ""))
    return "; ".join(parts)
