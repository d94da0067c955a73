"""Range requests over HTTP(S), with the standard library only.

Several ranges go in one request (``Range: bytes=a-b,c-d``, answered as
``multipart/byteranges``) where the server supports it; a server that answers a
multi-range request with the whole file (200) is hung up on at once, and is then asked
one range per request. Every URL, the first and every redirect hop, is decided by the
policy before it is requested. Requests and body bytes are counted.

Each remote file (and each listing request) has the fetch layer's overall deadline:
the policy's ``downloads.deadline_s`` plus the bytes received so far at
``downloads.min_rate_kb_s`` (``HttpSettings`` may only tighten them);
a watchdog shuts the socket once it has passed, so a server trickling bytes (headers
or body) cannot hold a scan open.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from safehub._fetch.http import (
    HttpSettings,
    TransferLimits,
    _Watchdog,
    transfer_limits,
)
from safehub._policy.policy import Policy
from safehub._remote.target import decide_url
from safehub.errors import FetchError

__all__ = ["HttpRangeClient", "Stats", "get_json"]

_MAX_HOPS = 5
_MAX_HEADER = 6000  # bytes of Range header per request: under common server limits (8 KiB)
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


@dataclass
class Stats:
    """What reading a remote file cost."""

    requests: int = 0
    bytes: int = 0  # response body bytes received
    ranges: list[tuple[int, int]] = field(default_factory=list)  # [start, end) asked for


class _Deadline:
    """``deadline + received / min_rate`` seconds from the start: the policy's
    ``downloads.deadline_s`` and ``downloads.min_rate_kb_s`` (see TransferLimits)."""

    def __init__(self, url: str, limits: TransferLimits, received: Callable[[], int]):
        self.url = url
        self.limits = limits
        self.received = received
        self.started = time.monotonic()

    def remaining(self) -> float:
        return self.started + self.limits.allowed(self.received()) - time.monotonic()

    def error(self) -> FetchError:
        return self.limits.error(self.url, self.received())

    @contextlib.contextmanager
    def watch(self) -> Iterator[_Watchdog]:
        """A watchdog for one request: set ``.sock``; a read it cut short is a deadline."""
        if self.remaining() <= 0:
            raise self.error()
        watch = _Watchdog(self.remaining)
        try:
            yield watch
        except (OSError, http.client.HTTPException, FetchError) as exc:
            if watch.fired:
                raise self.error() from exc
            raise
        finally:
            watch.stop()
        if watch.fired:
            raise self.error()

    def read(self, resp: http.client.HTTPResponse, limit: int,
             count: Callable[[int], None]) -> bytes:
        """Up to ``limit`` bytes of ``resp``, read by read so that a trickle is timed."""
        chunks: list[bytes] = []
        got = 0
        while got < limit:
            if self.remaining() <= 0:
                raise self.error()
            chunk = resp.read1(min(1 << 16, limit - got))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
            count(len(chunk))
        if resp.length == 0:
            resp.read()  # read1 leaves a finished response open: close it for keep-alive
        return b"".join(chunks)


class HttpRangeClient:
    """Reads byte ranges of one URL. ``multi_range``: whether several ranges may go in
    one request (learnt from the server's first answer)."""

    def __init__(self, url: str, policy: Policy, *, timeout: float = 60.0,
                 user_agent: str = "safehub-scan", settings: HttpSettings | None = None
                 ) -> None:
        self.url = decide_url(policy, url)
        self.policy = policy
        self.timeout = timeout
        self.user_agent = user_agent
        self.stats = Stats()
        self.deadline = _Deadline(self.url, transfer_limits(settings, policy),
                                  lambda: self.stats.bytes)
        self.multi_range = True
        self.size: int | None = None
        self._conns: dict[tuple[str, str, int | None], http.client.HTTPConnection] = {}
        self._final: str | None = None  # where the last redirect chain ended

    # --- connections ----------------------------------------------------------------------

    def _conn(self, url: str) -> http.client.HTTPConnection:
        parts = urlsplit(url)
        key = (parts.scheme, parts.hostname or "", parts.port)
        conn = self._conns.get(key)
        if conn is None:
            if parts.scheme == "https":
                conn = http.client.HTTPSConnection(parts.hostname or "", parts.port,
                                                   timeout=self.timeout,
                                                   context=ssl.create_default_context())
            else:
                conn = http.client.HTTPConnection(parts.hostname or "", parts.port,
                                                  timeout=self.timeout)
            self._conns[key] = conn
        return conn

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    def _drop(self, url: str) -> None:
        parts = urlsplit(url)
        conn = self._conns.pop((parts.scheme, parts.hostname or "", parts.port), None)
        if conn is not None:
            conn.close()

    def _get(self, range_header: str, watch: _Watchdog
             ) -> tuple[http.client.HTTPResponse, str]:
        """GET with ``Range``, following redirects (each hop decided by the policy)."""
        url = self._final or self.url
        for _ in range(_MAX_HOPS + 1):
            parts = urlsplit(url)
            target = parts.path + (f"?{parts.query}" if parts.query else "")
            headers = {"Range": range_header, "User-Agent": self.user_agent,
                       "Accept-Encoding": "identity"}
            self.stats.requests += 1
            try:
                conn = self._conn(url)
                conn.timeout = max(0.001, min(self.timeout, self.deadline.remaining()))
                if conn.sock is not None:
                    conn.sock.settimeout(conn.timeout)
                conn.request("GET", target, headers=headers)
                watch.sock = conn.sock
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                self._drop(url)
                if watch.fired:
                    raise self.deadline.error() from exc
                raise FetchError(f"request failed: {exc}", subject=url) from exc
            if resp.status in (301, 302, 303, 307, 308):
                location = resp.getheader("Location")
                resp.read(1 << 16)
                if resp.length:  # a redirect with a large body: do not read it
                    self._drop(url)
                if not location:
                    raise FetchError(f"HTTP {resp.status} without a Location", subject=url)
                url = decide_url(self.policy, urljoin(url, location))
                continue
            self._final = url
            return resp, url
        raise FetchError(f"more than {_MAX_HOPS} redirects", subject=self.url)

    # --- ranges ---------------------------------------------------------------------------

    def fetch(self, ranges: list[tuple[int, int]]) -> list[tuple[int, bytes]]:
        """Pieces ``(start, data)`` covering every ``[start, end)`` in ``ranges`` (ends
        past the file are cut). The first call learns :attr:`size`."""
        wanted = [(s, e) for s, e in ranges if e > s]
        if not wanted:
            return []
        self.stats.ranges.extend(wanted)
        pieces: list[tuple[int, bytes]] = []
        batch: list[tuple[int, int]] = []
        length = 0
        for start, end in wanted:
            spec = f"{start}-{end - 1}"
            if batch and (not self.multi_range or length + len(spec) + 1 > _MAX_HEADER):
                pieces.extend(self._request(batch))
                batch, length = [], 0
            batch.append((start, end))
            length += len(spec) + 1
        if batch:
            pieces.extend(self._request(batch))
        return pieces

    def fetch_suffix(self, head: int, tail: int) -> list[tuple[int, bytes]]:
        """The first ``head`` and last ``tail`` bytes, in one request where the server
        answers multi-range requests; learns :attr:`size`."""
        if self.multi_range:
            pieces = self._send(f"bytes=0-{head - 1},-{tail}", [(0, head)], extra=tail)
            if pieces is not None:
                return pieces
        pieces = self._send(f"bytes=0-{head - 1}", [(0, head)])
        if pieces is None:
            raise FetchError("the server does not answer range requests", subject=self.url)
        size = self.size or 0
        if size > head:
            pieces.extend(self.fetch([(max(head, size - tail), size)]))
        return pieces

    def _request(self, batch: list[tuple[int, int]]) -> list[tuple[int, bytes]]:
        header = "bytes=" + ",".join(f"{s}-{e - 1}" for s, e in batch)
        pieces = self._send(header, batch)
        if pieces is not None:
            return pieces
        # A server that ignores multi-range requests: one range per request.
        out: list[tuple[int, bytes]] = []
        for start, end in batch:
            one = self._send(f"bytes={start}-{end - 1}", [(start, end)])
            if one is None:
                raise FetchError("the server does not answer range requests",
                                 subject=self.url)
            out.extend(one)
        return out

    def _send(self, header: str, batch: list[tuple[int, int]],
              extra: int = 0) -> list[tuple[int, bytes]] | None:
        """One request; None when the server answered with the whole file (it was hung
        up on) so the caller retries with single ranges."""
        try:
            with self.deadline.watch() as watch:
                return self._send_once(header, batch, extra, watch)
        except FetchError:
            self.close()  # a connection cut short is never reused
            raise

    def _send_once(self, header: str, batch: list[tuple[int, int]], extra: int,
                   watch: _Watchdog) -> list[tuple[int, bytes]] | None:
        resp, url = self._get(header, watch)
        if resp.status == 200:
            total = resp.getheader("Content-Length")
            self._drop(url)  # never read a whole file that was not asked for
            if "," not in header:
                if total is not None and total.isdigit():
                    self.size = int(total)
                return None
            self.multi_range = False
            return None
        if resp.status == 416:  # nothing satisfiable: an empty file, or asked past its end
            resp.read(1 << 16)
            found = re.match(r"bytes \*/(\d+)", resp.getheader("Content-Range") or "")
            if found is not None:
                self.size = int(found.group(1))
            return []
        if resp.status != 206:
            resp.read(1 << 16)
            raise FetchError(f"HTTP {resp.status} {resp.reason}", subject=url)
        ctype = resp.getheader("Content-Type") or ""
        budget = sum(e - s for s, e in batch) + extra + 1024 * (len(batch) + 2)
        body = self.deadline.read(resp, budget + 1, self._count)
        if len(body) > budget:
            self._drop(url)
            raise FetchError("the server sent more than the ranges asked for", subject=url)
        if ctype.lower().startswith("multipart/byteranges"):
            match = re.search(r'boundary="?([^";]+)"?', ctype)
            if match is None:
                raise FetchError("multipart answer without a boundary", subject=url)
            return self._parts(body, match.group(1).encode(), url)
        found = _CONTENT_RANGE.match(resp.getheader("Content-Range") or "")
        if found is None:
            raise FetchError("a 206 answer without Content-Range", subject=url)
        start, end = int(found.group(1)), int(found.group(2))
        if found.group(3) != "*":
            self.size = int(found.group(3))
        if len(body) != end - start + 1:
            raise FetchError("a range answer of the wrong length", subject=url)
        return [(start, body)]

    def _count(self, n: int) -> None:
        self.stats.bytes += n

    def _parts(self, body: bytes, boundary: bytes, url: str) -> list[tuple[int, bytes]]:
        pieces: list[tuple[int, bytes]] = []
        marker = b"--" + boundary
        pos = body.find(marker)
        while pos >= 0:
            pos += len(marker)
            if body[pos:pos + 2] == b"--":
                break
            head_end = body.find(b"\r\n\r\n", pos)
            if head_end < 0:
                raise FetchError("a truncated multipart answer", subject=url)
            headers = body[pos:head_end].decode("latin-1")
            found = re.search(r"(?im)^content-range:\s*bytes (\d+)-(\d+)/(\d+|\*)", headers)
            if found is None:
                raise FetchError("a multipart part without Content-Range", subject=url)
            start, end = int(found.group(1)), int(found.group(2))
            if found.group(3) != "*":
                self.size = int(found.group(3))
            data_start = head_end + 4
            data = body[data_start:data_start + end - start + 1]
            if len(data) != end - start + 1:
                raise FetchError("a truncated multipart part", subject=url)
            pieces.append((start, data))
            pos = body.find(marker, data_start + len(data))
        return pieces


def get_json(url: str, policy: Policy, stats: Stats, *, limit: int = 64 << 20,
             timeout: float = 60.0, settings: HttpSettings | None = None
             ) -> tuple[object, str | None]:
    """GET a JSON document (an API listing): ``(value, next page URL or None)``. The URL
    and every redirect hop are decided by the policy; the whole call has one deadline."""
    current = decide_url(policy, url)
    received = [0]

    def count(n: int) -> None:
        received[0] += n
        stats.bytes += n

    deadline = _Deadline(current, transfer_limits(settings, policy), lambda: received[0])
    with deadline.watch() as watch:
        return _get_json(current, policy, stats, limit, timeout, deadline, watch, count)


def _get_json(current: str, policy: Policy, stats: Stats, limit: int, timeout: float,
              deadline: _Deadline, watch: _Watchdog, count: Callable[[int], None]
              ) -> tuple[object, str | None]:
    import json

    url = current
    for _ in range(_MAX_HOPS + 1):
        parts = urlsplit(current)
        cls = http.client.HTTPSConnection if parts.scheme == "https" else \
            http.client.HTTPConnection
        conn = cls(parts.hostname or "", parts.port,
                   timeout=max(0.001, min(timeout, deadline.remaining())))
        stats.requests += 1
        try:
            conn.connect()
            watch.sock = conn.sock
            conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""),
                         headers={"Accept": "application/json", "User-Agent": "safehub-scan"})
            resp = conn.getresponse()
            if resp.status in (301, 302, 303, 307, 308) and resp.getheader("Location"):
                current = decide_url(policy, urljoin(current, resp.getheader("Location") or ""))
                continue
            body = deadline.read(resp, limit + 1, count)
        except (OSError, http.client.HTTPException) as exc:
            if watch.fired:
                raise deadline.error() from exc
            raise FetchError(f"request failed: {exc}", subject=current) from exc
        finally:
            conn.close()
        if resp.status != 200:
            raise FetchError(f"HTTP {resp.status} {resp.reason}", subject=current)
        if len(body) > limit:
            raise FetchError("the listing is too large", subject=current)
        try:
            value = json.loads(body)
        except ValueError as exc:
            raise FetchError(f"not JSON: {exc}", subject=current) from exc
        link = resp.getheader("Link") or ""
        found = re.search(r'<([^>]+)>;\s*rel="next"', link)
        return value, urljoin(current, found.group(1)) if found else None
    raise FetchError(f"more than {_MAX_HOPS} redirects", subject=url)
