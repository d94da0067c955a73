"""Range reads from S3-compatible stores through fsspec's s3fs (the ``s3`` extra).

S3 answers one range per request (GetObject takes a single ``Range``), so a file's reads
are planned to few ranges (:func:`safehub._remote.plan.fit`): an object up to 1 MiB is read
whole in one request, a larger one's head and a 256 KiB tail (the end record and, for up
to about 2,500 members, the central directory) in two, and the records between in ranges
merged across gaps, all fetched concurrently. The endpoint is botocore's (``$AWS_ENDPOINT_URL_S3``,
``$AWS_ENDPOINT_URL``); credentials come from the usual AWS sources, never from safehub.
Each object's path-style URL on the endpoint is decided by the policy before any request.

Every listing and read keeps the fetch layer's overall deadline (``downloads.deadline_s``
plus the bytes asked for at ``downloads.min_rate_kb_s``): botocore's own timeouts are per
socket read, which a server that trickles a byte at a time never trips, so each
operation runs as a task on s3fs's event loop that is cancelled when its time is up.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine
from typing import Any

from safehub._fetch.http import TransferLimits, transfer_limits
from safehub._policy.policy import Policy
from safehub._remote.http import Stats
from safehub._remote.target import decide_url, s3_endpoint, s3_object_url
from safehub.errors import FetchError

__all__ = ["S3RangeClient", "list_objects", "s3_filesystem"]

_LISTING_BYTES = 1 << 20  # what a listing's allowance counts: about 3,000 keys of XML

_WHOLE = 1 << 20  # objects up to this size: one request for all of it
_TAIL = 1 << 18  # the tail read: end record and, usually, the central directory


_FILESYSTEMS: dict[str, Any] = {}


def s3_filesystem(endpoint: str | None = None) -> Any:
    """An s3fs file system on ``endpoint`` (default: the configured one), one per
    endpoint and process; FetchError when the extra is missing."""
    try:
        import s3fs
    except ImportError as exc:
        raise FetchError("reading s3:// needs the s3 extra", subject="s3://",
                         fix="pip install 'safehub[s3]'") from exc
    endpoint = endpoint or s3_endpoint()
    fs = _FILESYSTEMS.get(endpoint)
    if fs is None:
        kwargs: dict[str, Any] = {"use_listings_cache": False, "skip_instance_cache": True}
        if endpoint != "https://s3.amazonaws.com":
            kwargs["endpoint_url"] = endpoint
        fs = _FILESYSTEMS[endpoint] = s3fs.S3FileSystem(**kwargs)
    return fs


def _within(fs: Any, coro: Coroutine[Any, Any, Any], limits: TransferLimits, nbytes: int,
            url: str) -> Any:
    """Run one s3fs coroutine on its loop, cancelled once ``limits`` allow no more time for
    ``nbytes`` bytes (FetchError then)."""
    future = asyncio.run_coroutine_threadsafe(coro, fs.loop)
    try:
        return future.result(timeout=limits.allowed(nbytes))
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise limits.error(url, nbytes, counted="requested") from None


def list_objects(fs: Any, bucket: str, prefix: str, policy: Policy,
                 stats: Stats, limits: TransferLimits | None = None
                 ) -> list[tuple[str, int, str]]:
    """``(key, size, ETag)`` of the object ``prefix`` names, or of every object under it;
    ``limits``: each request's deadline (the policy's when None)."""
    url = decide_url(policy, s3_object_url(bucket, prefix))
    limits = limits or transfer_limits(None, policy)
    path = f"{bucket}/{prefix}".rstrip("/")
    stats.requests += 1
    try:
        info = _within(fs, fs._info(path), limits, 0, url)
        if info.get("type") == "file":
            return [(prefix, int(info["size"]), str(info.get("ETag", "")))]
        stats.requests += 1
        found = _within(fs, fs._find(path, detail=True), limits, _LISTING_BYTES, url)
    except FileNotFoundError as exc:
        raise FetchError("no such S3 object or prefix", subject=f"s3://{path}") from exc
    except OSError as exc:
        raise FetchError(f"S3 listing failed: {exc}", subject=f"s3://{path}") from exc
    out = []
    for name, meta in sorted(found.items()):
        if meta.get("type") == "file":
            out.append((name.split("/", 1)[1], int(meta["size"]), str(meta.get("ETag", ""))))
    return out


class S3RangeClient:
    """Reads byte ranges of one object."""

    multi_range = False

    def __init__(self, fs: Any, bucket: str, key: str, size: int, policy: Policy,
                 endpoint: str | None = None, limits: TransferLimits | None = None) -> None:
        self.url = decide_url(policy, s3_object_url(bucket, key, endpoint))
        self.limits = limits or transfer_limits(None, policy)
        self.fs = fs
        self.path = f"{bucket}/{key}"
        self.size: int | None = size
        self.stats = Stats()

    def fetch(self, ranges: list[tuple[int, int]]) -> list[tuple[int, bytes]]:
        size = self.size or 0
        wanted = [(s, min(e, size)) for s, e in ranges if s < min(e, size)]
        if not wanted:
            return []
        self.stats.ranges.extend(wanted)
        self.stats.requests += len(wanted)
        try:
            datas = _within(self.fs, self.fs._cat_ranges(
                [self.path] * len(wanted), [s for s, _ in wanted], [e for _, e in wanted],
                on_error="raise"), self.limits, sum(e - s for s, e in wanted), self.url)
        except OSError as exc:
            raise FetchError(f"S3 read failed: {exc}", subject=f"s3://{self.path}") from exc
        out = []
        for (start, end), data in zip(wanted, datas, strict=True):
            if isinstance(data, BaseException):
                raise FetchError(f"S3 read failed: {data}", subject=f"s3://{self.path}")
            if len(data) != end - start:
                raise FetchError("S3 sent a range of the wrong length",
                                 subject=f"s3://{self.path}")
            self.stats.bytes += len(data)
            out.append((start, bytes(data)))
        return out

    def fetch_suffix(self, head: int, tail: int) -> list[tuple[int, bytes]]:
        size = self.size or 0
        tail = max(tail, _TAIL)
        if size <= max(head + tail, _WHOLE):
            return self.fetch([(0, size)])
        return self.fetch([(0, head), (size - tail, size)])

    def close(self) -> None:
        pass
