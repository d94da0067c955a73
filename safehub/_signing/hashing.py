"""Hashing a model: files (or shards) in parallel, each streamed in fixed-size chunks.

Reads use ``pread`` into a per-thread buffer, so memory stays at one chunk per worker
whatever the file sizes, and several shards of one file can be read concurrently
from one descriptor. ``hashlib`` releases the GIL on large updates, so threads hash
in parallel.

A caller that will load some files itself can hand over their open file objects or
descriptors (``provided``): those are hashed through the caller's descriptor, so the
bytes verified are the bytes the caller then reads, whatever happens to the path.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeAlias

from safehub._signing.manifest import Shard, hash_factory, shard_ranges
from safehub._signing.tree import RootDir

__all__ = ["CHUNK_SIZE", "FileDigest", "Provided", "default_workers", "hash_files"]

CHUNK_SIZE = 1 << 20
# At most this many files are held open at once while their shards are queued.
_MAX_OPEN = 64

Provided: TypeAlias = "BinaryIO | int"

_local = threading.local()


def default_workers() -> int:
    """Threads to hash with: enough to keep the disk queue full and every core busy."""
    return min(32, (os.cpu_count() or 2) + 4)


def _buffer() -> memoryview:
    view: memoryview | None = getattr(_local, "view", None)
    if view is None:
        view = memoryview(bytearray(CHUNK_SIZE))
        _local.view = view
    return view


@dataclass(frozen=True)
class FileDigest:
    """The digest of one file as found, or why it could not be read."""

    path: str
    size: int = 0
    digest: str | None = None
    shards: tuple[Shard, ...] = ()
    error: str | None = None


class _Source:
    """Positional reads from a descriptor (ours or the caller's) or a file object."""

    def __init__(self, *, fd: int | None = None, obj: Any = None, owned: bool = False):
        self.fd = fd
        self.obj = obj
        self.owned = owned
        self.lock = threading.Lock()
        if fd is not None:
            self.size = os.fstat(fd).st_size
        else:
            with self.lock:
                here = obj.tell()
                self.size = obj.seek(0, io.SEEK_END)
                obj.seek(here)

    def read_at(self, view: memoryview, offset: int) -> int:
        if self.fd is not None:
            if hasattr(os, "preadv"):
                return os.preadv(self.fd, [view], offset)
            data = os.pread(self.fd, len(view), offset)
            view[: len(data)] = data
            return len(data)
        # A file object without a descriptor: serialize, and put its position back.
        with self.lock:
            here = self.obj.tell()
            try:
                self.obj.seek(offset)
                if hasattr(self.obj, "readinto"):
                    return int(self.obj.readinto(view))
                data = self.obj.read(len(view))
                view[: len(data)] = data
                return len(data)
            finally:
                self.obj.seek(here)

    def close(self) -> None:
        if self.owned and self.fd is not None:
            os.close(self.fd)


def _source_for(value: Provided) -> _Source:
    if isinstance(value, int):
        return _Source(fd=value)
    try:
        fd = value.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return _Source(obj=value)
    return _Source(fd=fd)


def _hash_range(src: _Source, start: int, end: int | None,
                factory: Callable[[], Any]) -> str:
    hasher = factory()
    buf = _buffer()
    pos = start
    while end is None or pos < end:
        want = CHUNK_SIZE if end is None else min(CHUNK_SIZE, end - pos)
        n = src.read_at(buf[:want], pos)
        if n <= 0:
            break
        hasher.update(buf[:n])
        pos += n
    return str(hasher.hexdigest())


class _Pending:
    """One open file whose ranges are being hashed; closes it after the last one."""

    def __init__(self, src: _Source, count: int, release: Callable[[], None]):
        self.src = src
        self.count = count
        self.release = release
        self.lock = threading.Lock()

    def done(self) -> bool:
        with self.lock:
            self.count -= 1
            last = self.count == 0
        if last:
            try:
                self.src.close()
            finally:
                self.release()
        return last


def hash_files(root: Path, paths: Sequence[str], *, single_file: bool, hash_type: str,
               shard_size: int | None = None, provided: Mapping[str, Provided] | None = None,
               max_workers: int | None = None,
               progress: Callable[[str], None] | None = None,
               expected: Mapping[str, tuple[int, int]] | None = None) -> dict[str, FileDigest]:
    """Hash ``paths`` (model-relative) under ``root``; whole files, or shards of
    ``shard_size`` bytes as model_signing cuts them. Paths in ``provided`` are read
    through the caller's object or descriptor instead of being opened.

    ``expected`` maps a path to the (size, shard count) a signature lists for it: a
    sharded file whose size or shard count differs is not hashed (it cannot match, and
    a hostile shard size must not make the verifier queue a task per byte).
    """
    factory = hash_factory(hash_type)
    provided = provided or {}
    results: dict[str, FileDigest] = {}
    sizes: dict[str, int] = {}
    pieces: dict[str, dict[tuple[int, int | None], str]] = {}
    errors: dict[str, str] = {}
    gate = threading.BoundedSemaphore(_MAX_OPEN)
    report = threading.Lock()

    def job(pending: _Pending, path: str, start: int, end: int | None) -> None:
        try:
            digest = _hash_range(pending.src, start, end, factory)
            with report:
                pieces[path][(start, end)] = digest
        except OSError as exc:
            with report:
                errors.setdefault(path, exc.strerror or str(exc))
        finally:
            if pending.done() and progress is not None:
                with report:
                    progress(path)

    futures: list[Future[None]] = []
    with RootDir(root, single_file=single_file) as tree, \
            ThreadPoolExecutor(max_workers=max_workers or default_workers(),
                               thread_name_prefix="safehub-hash") as pool:
        for path in paths:
            gate.acquire()
            try:
                src = _source_for(provided[path]) if path in provided else \
                    _Source(fd=tree.open(path), owned=True)
            except OSError as exc:
                gate.release()
                results[path] = FileDigest(path, error=exc.strerror or str(exc))
                continue
            sizes[path] = src.size
            pieces[path] = {}
            want = (expected or {}).get(path)
            if shard_size is not None and want is not None and want != (
                    src.size, -(-src.size // shard_size)):
                ranges: list[tuple[int, int | None]] = []
            elif shard_size is None:
                ranges = [(0, None)]
            else:
                ranges = list(shard_ranges(src.size, shard_size))
            if not ranges:  # an empty file has no shard; a mismatched one is not hashed
                src.close()
                gate.release()
                continue
            pending = _Pending(src, len(ranges), gate.release)
            futures.extend(pool.submit(job, pending, path, s, e) for s, e in ranges)
        for future in futures:
            future.result()

    for path, got in pieces.items():
        if path in errors:
            results[path] = FileDigest(path, size=sizes[path], error=errors[path])
        elif shard_size is None:
            results[path] = FileDigest(path, size=sizes[path], digest=got[(0, None)])
        else:
            shards = tuple(Shard(s, e, d) for (s, e), d in sorted(
                ((k[0], k[1] if k[1] is not None else 0), v) for k, v in got.items()))
            results[path] = FileDigest(path, size=sizes[path], shards=shards)
    return results
