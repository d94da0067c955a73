"""The file cache: downloaded files keyed by URL, verified on every use.

A download goes to a unique ``.partial`` file in the cache's temporary area,
is fsynced, checked against every expected digest, made read-only and renamed
into place; its record is written last. Every use, cache hit or not, hands back
an open descriptor whose bytes were hashed (against the record, and against
every expected digest): the caller scans and loads from that same descriptor.

A cached file whose bytes no longer match its record was changed behind
safehub's back: that is an :class:`~safehub.errors.IntegrityError`, never a
silent re-download. A cached file that matches its record but not a (new) pin is
downloaded again; the cached copy is replaced only if the new download matches.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from safehub._fetch.cache import (
    CacheLayout,
    FileRecord,
    file_name_for,
    fsync_dir,
    now_iso,
    read_record,
    write_json_atomic,
)
from safehub._fetch.http import DownloadResult
from safehub._fetch.locks import entry_lock
from safehub.errors import FetchError, IntegrityError

__all__ = ["HASH_REGEX", "Expected", "FileCache", "Imported", "LocalSource", "OpenedEntry",
           "hash_prefix_of"]

log = logging.getLogger("safehub.fetch")

# torch.hub's HASH_REGEX: "-<hex>." in a file name is a SHA-256 prefix.
HASH_REGEX = re.compile(r"-([a-f0-9]*)\.")

FileDownload = Callable[[BinaryIO], DownloadResult]


@dataclass(frozen=True)
class Imported:
    """Bytes a local source (torch.hub's ``checkpoints/``) wrote into a new entry, and the
    provenance the entry's record keeps: where they came from, which check vouched."""

    result: DownloadResult
    provenance: dict[str, str]


# Fills the entry's file from somewhere other than the network, after verifying it; None
# when it has nothing usable (the network is then tried, if online).
LocalSource = Callable[[BinaryIO], "Imported | None"]


def hash_prefix_of(file_name: str) -> str | None:
    """The SHA-256 prefix torch.hub reads from a file name (``resnet18-f37072fd.pth``)."""
    match = HASH_REGEX.search(file_name)
    return match.group(1) if match and match.group(1) else None


@dataclass(frozen=True)
class Expected:
    """A digest the file must have: a full SHA-256, or a prefix of one."""

    digest: str
    source: str  # "policy downloads.pins.<key>", "lockfile", "file-name hash prefix", ...
    # Whether the digest is tied to the URL (a pin of the URL or its own file name, the
    # lockfile, an explicit hash_prefix), so that bytes from elsewhere (torch.hub's
    # checkpoints) that match it may stand in for the URL's. A digest reached through a
    # caller-chosen file_name is checked, but vouches for nothing.
    vouches: bool = True

    def matches(self, sha256: str) -> bool:
        """Whether a file with this SHA-256 satisfies the expectation."""
        return sha256.startswith(self.digest.lower())

    @property
    def full(self) -> bool:
        """Whether this is a whole SHA-256, not a prefix."""
        return len(self.digest) == 64


@dataclass
class OpenedEntry:
    """An open, verified cache entry. The caller closes ``fh``."""

    fh: BinaryIO
    path: Path
    record: FileRecord
    from_cache: bool


class FileCache:
    """URL-keyed files under ``<root>/files``."""

    def __init__(self, layout: CacheLayout):
        self.layout = layout

    def open(self, url: str, *, expected: list[Expected], download: FileDownload | None,
             repo: str | None = None, local: LocalSource | None = None) -> OpenedEntry:
        """Open the verified file for ``url``, downloading it first when needed.

        ``download`` is None offline. ``local`` is tried first on a miss, online or
        not (see :mod:`safehub._fetch.torch_cache`). Raises IntegrityError for a
        tampered cache entry or a download that misses an expected digest, FetchError
        when the file is missing offline or the download fails.
        """
        lock = self.layout.file_lock(url)
        refresh_reason = ""
        with entry_lock(lock, shared=True):
            hit = self._open_cached(url)
        if hit is not None:
            refresh_reason = _check_hit(hit, expected)
            if not refresh_reason:
                return hit
            hit.fh.close()
            if download is None:
                raise IntegrityError(
                    f"the cached file does not match: {refresh_reason}", subject=str(hit.path),
                    fix="run online to download it again, or correct the pin")
        if download is None and local is None:
            raise self._missing_offline(url)
        self.layout.ensure()
        with entry_lock(lock):
            tag = self.layout.file_tag(url)
            self.layout.clean_stale(tag)
            if not refresh_reason:  # another process may have finished it meanwhile
                hit = self._open_cached(url)
                if hit is not None:
                    reason = _check_hit(hit, expected)
                    if not reason:
                        return hit
                    hit.fh.close()
                    refresh_reason = reason
            if local is not None and not refresh_reason:
                entry = self._download(url, expected, local, repo, tag)
                if entry is not None:
                    return entry
            if download is None:
                raise self._missing_offline(url)
            if refresh_reason:
                log.info("%s: downloading again: %s", url, refresh_reason)
            net = download
            got = self._download(url, expected, lambda fh: Imported(net(fh), {}), repo, tag)
            if got is None:  # a network download always fills the entry or raises
                raise FetchError("the download produced nothing", subject=url)
            return got

    def _missing_offline(self, url: str) -> FetchError:
        return FetchError(f"offline: {url} is not in the cache",
                          subject=str(self.layout.file_dir(url)),
                          fix="run once online to cache it (or unset SAFEHUB_OFFLINE / "
                          "downloads.offline)")

    def _download(self, url: str, expected: list[Expected], fill: LocalSource,
                  repo: str | None, tag: str) -> OpenedEntry | None:
        layout = self.layout
        partial = layout.new_tmp(tag, ".partial")
        fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        fh: BinaryIO = os.fdopen(fd, "w+b")
        try:
            got = fill(fh)
            if got is None:
                fh.close()
                partial.unlink(missing_ok=True)
                return None
            result = got.result
            fh.flush()
            os.fsync(fh.fileno())
            for exp in expected:
                if not exp.matches(result.sha256):
                    raise IntegrityError(
                        f"SH300 digest-mismatch: the download's SHA-256 is {result.sha256}, "
                        f"but {exp.source} requires {exp.digest}", subject=url,
                        fix=f"do not use this file; if the publisher changed it on purpose, "
                        f"update {exp.source} after checking the new file")
            os.fchmod(fh.fileno(), 0o444)
            name = file_name_for(url)
            folder = layout.file_dir(url)
            record_path = layout.file_record(url)
            folder.mkdir(parents=True, exist_ok=True)
            # Record first out, last in: a crash in between leaves no entry at all.
            record_path.unlink(missing_ok=True)
            final = folder / name
            os.replace(partial, final)
            fsync_dir(folder)
            record = FileRecord(url=url, name=name, sha256=result.sha256, size=result.size,
                                time=now_iso(), final_url=result.final_url, repo=repo,
                                hops=result.hops, provenance=dict(got.provenance))
            write_json_atomic(record_path, record.to_json())
            reader = _reopen_same(fh, final, result.sha256)
        except BaseException:
            fh.close()
            partial.unlink(missing_ok=True)
            raise
        fh.close()
        log.info("cached %s (sha256 %s, %d bytes)", url, result.sha256, result.size)
        return OpenedEntry(reader, final, record, from_cache=False)

    def _open_cached(self, url: str) -> OpenedEntry | None:
        layout = self.layout
        record_path = layout.file_record(url)
        folder = layout.file_dir(url)
        try:
            data = read_record(record_path)
            record = None if data is None else FileRecord.from_json(data)
        except (ValueError, KeyError, TypeError) as exc:
            raise _tampered(record_path, f"its record is unreadable ({exc})") from exc
        if record is None:
            return None
        if record.url != url or record.name != file_name_for(url):
            raise _tampered(record_path, f"its record is for {record.url!r}")
        path = folder / record.name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:  # a symlink (ELOOP) or worse where the file should be
            raise _tampered(path, f"it cannot be opened as a plain file ({exc})") from exc
        return OpenedEntry(_snapshot_reader(fd, path), path, record, from_cache=True)


def _snapshot_reader(fd: int, path: Path) -> BinaryIO:
    """A reader over a private sealed copy of ``fd``'s bytes (closes ``fd``): hashing,
    scanning and loading then read the same bytes, whatever happens to the file."""
    from safehub._snapshot import Snapshot

    try:
        with Snapshot.of_fd(fd, str(path)) as snap:
            return snap.open()
    finally:
        os.close(fd)


def _reopen_same(written: BinaryIO, path: Path, sha256: str) -> BinaryIO:
    """A reader over a private snapshot of the file just written and hashed (the same
    inode, and the same SHA-256: a rewrite after the download is caught here)."""
    from safehub._snapshot import Snapshot

    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        a, b = os.fstat(written.fileno()), os.fstat(fd)
        if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino):
            raise _tampered(path, "it was replaced while it was being installed")
        with Snapshot.of_fd(fd, str(path)) as snap:
            if snap.sha256 != sha256:
                raise _tampered(path, f"its SHA-256 became {snap.sha256} after the download")
            return snap.open()
    finally:
        os.close(fd)


def _check_hit(hit: OpenedEntry, expected: list[Expected]) -> str:
    """Hash the open file: a mismatch with the record raises; a mismatch with an expected
    digest returns the reason to download again (empty when all is well)."""
    h = hashlib.sha256()
    size = 0
    while chunk := hit.fh.read(1 << 20):
        h.update(chunk)
        size += len(chunk)
    hit.fh.seek(0)
    digest = h.hexdigest()
    if digest != hit.record.sha256 or size != hit.record.size:
        hit.fh.close()
        raise _tampered(hit.path, f"its SHA-256 is {digest}, the record says "
                        f"{hit.record.sha256}")
    for exp in expected:
        if not exp.matches(digest):
            return f"SHA-256 {digest} does not match {exp.source} ({exp.digest})"
    return ""


def _tampered(path: Path, why: str) -> IntegrityError:
    return IntegrityError(
        f"SH400 cache-tampered: the cached file changed since it was downloaded: {why}",
        subject=str(path),
        fix="find out what changed it, then delete the file and its .json record (the next "
        "use downloads it again)")
