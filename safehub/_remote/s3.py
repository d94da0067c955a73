"""Range reads from S3-compatible stores through fsspec's s3fs (the ``s3`` extra).

S3 answers one range per request, so the plan's ranges are coalesced with a wider gap and
fetched concurrently. The endpoint is botocore's (``$AWS_ENDPOINT_URL_S3``,
``$AWS_ENDPOINT_URL``); credentials come from the usual AWS sources, never from safehub.
Each object's path-style URL on the endpoint is decided by the policy before any request.
"""

from __future__ import annotations

from typing import Any

from safehub._policy.policy import Policy
from safehub._remote.http import Stats
from safehub._remote.target import decide_url, s3_endpoint, s3_object_url
from safehub.errors import FetchError

__all__ = ["S3RangeClient", "list_objects", "s3_filesystem"]


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


def list_objects(fs: Any, bucket: str, prefix: str, policy: Policy,
                 stats: Stats) -> list[tuple[str, int, str]]:
    """``(key, size, ETag)`` of the object ``prefix`` names, or of every object under it."""
    decide_url(policy, s3_object_url(bucket, prefix))
    path = f"{bucket}/{prefix}".rstrip("/")
    stats.requests += 1
    try:
        info = fs.info(path)
        if info.get("type") == "file":
            return [(prefix, int(info["size"]), str(info.get("ETag", "")))]
        stats.requests += 1
        found = fs.find(path, detail=True)
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
                 endpoint: str | None = None) -> None:
        self.url = decide_url(policy, s3_object_url(bucket, key, endpoint))
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
            datas = self.fs.cat_ranges([self.path] * len(wanted), [s for s, _ in wanted],
                                       [e for _, e in wanted], on_error="raise")
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
        if size <= head + tail:
            return self.fetch([(0, size)])
        return self.fetch([(0, head), (size - tail, size)])

    def close(self) -> None:
        pass
