"""A small HTTP client for downloads, on ``http.client``.

What it guarantees, whoever calls it:

- only ``http`` and ``https``; every URL, the first and every redirect hop, is
  put in canonical form (:mod:`safehub._policy.urls`; a malformed one is
  refused) and that exact string goes through the caller's ``check`` (the
  policy) and is then requested; an https -> http hop is refused outright;
- a token is sent only with API and archive requests (``authenticate=True``; never with
  weights, whose URLs repo code chooses), only to the origin it belongs to, and never
  again in a chain once a hop has left the starting origin;
- a timeout on connect and on every read, and an overall deadline per request
  (redirects and retries included) of the policy's ``downloads.deadline_s`` seconds
  plus the time the bytes received so far take at ``downloads.min_rate_kb_s`` KiB per
  second (never the announced length), so a server that trickles bytes cannot hold a
  download open (:class:`TransferLimits`; ``HttpSettings`` may only tighten it); retries with
  exponential backoff for connection errors, timeouts, truncated bodies,
  408/425/429/5xx;
- a size cap checked against ``Content-Length`` before reading and against the
  bytes actually read;
- an interrupted body resumes with ``Range`` when the server advertised
  ``Accept-Ranges: bytes`` and a validator (strong ETag or Last-Modified) that is
  sent back as ``If-Range``; otherwise the download restarts from zero.

Proxies: ``https_proxy``/``no_proxy`` are honoured for https through a CONNECT
tunnel (certificates are still checked end to end); plain http (allowed only to
loopback) is never proxied.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn, Protocol
from urllib.parse import urljoin, urlsplit

from safehub._fetch.credentials import ENV_PREFIX, Credentials, Origin
from safehub._format.escape import redact_reference
from safehub._policy.urls import CanonicalURL, is_loopback_http, parse_url
from safehub._version import __version__
from safehub.errors import FetchError, InvalidIdentifier

if TYPE_CHECKING:
    from safehub._policy.schema import PolicyModel

__all__ = [
    "DownloadResult",
    "HopCheck",
    "HttpClient",
    "HttpError",
    "HttpSettings",
    "Progress",
    "ProgressCallback",
    "TransferLimits",
    "transfer_limits",
]

log = logging.getLogger("safehub.fetch")

CHUNK = 1 << 20
MAX_REDIRECTS = 8
_REDIRECTS = {301, 302, 303, 307, 308}
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
_ERROR_BODY_LIMIT = 64 << 10

# (url, previous url or None) -> None; raises to refuse the hop.
HopCheck = Callable[[str, "str | None"], None]


@dataclass(frozen=True)
class Progress:
    """A progress report for one download: bytes so far and the total when known."""

    url: str
    done: int
    total: int | None


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class HttpSettings:
    """Network behaviour. ``timeout`` bounds connect and every single read (seconds);
    ``retries`` is how many times a failed attempt is repeated, waiting ``backoff``
    seconds, doubling up to ``max_backoff``. ``deadline`` (seconds) and ``min_rate``
    (bytes per second) may tighten the policy's overall deadline
    (``downloads.deadline_s``, ``downloads.min_rate_kb_s``; see :class:`TransferLimits`):
    the smaller deadline and the higher rate win, None leaves the policy's."""

    timeout: float = 30.0
    retries: int = 4
    backoff: float = 0.5
    max_backoff: float = 30.0
    deadline: float | None = None
    min_rate: float | None = None
    user_agent: str = f"safehub/{__version__}"
    ssl_context: ssl.SSLContext | None = field(default=None, compare=False)


class _PolicyLike(Protocol):
    """What :func:`transfer_limits` reads of a policy (``safehub.policy.Policy``)."""

    @property
    def model(self) -> PolicyModel: ...

    def where(self, *key: str) -> str: ...


@dataclass(frozen=True)
class TransferLimits:
    """The overall time limit of one request (API call or download, redirects and retries
    included): at every moment, the time spent must stay within ``deadline + received /
    min_rate`` seconds, ``received`` being the body bytes that actually arrived (never the
    announced length, which the server chooses): a trickle ends soon after ``deadline``.

    ``deadline_from`` / ``min_rate_from`` name the setting that decided each value (a policy
    key and where it was set, or ``HttpSettings``), for the error."""

    deadline: float
    min_rate: float  # bytes per second
    deadline_from: str = "downloads.deadline_s"
    min_rate_from: str = "downloads.min_rate_kb_s"

    def allowed(self, received: int) -> float:
        return self.deadline + received / self.min_rate

    def error(self, url: str, received: int, *, counted: str = "received") -> FetchError:
        """The error for a request that ran past its deadline (``counted``: what the
        byte count is, where the allowance was for bytes requested, not received)."""
        return FetchError(
            f"{url} did not finish within its overall deadline of "
            f"{self.allowed(received):.1f} s ({self.deadline_from} = {self.deadline:g} s, "
            f"plus the {received} bytes {counted} at {self.min_rate_from} = "
            f"{self.min_rate / 1024:g} KiB/s)", subject=url,
            fix="use a faster server or network; if this server is known to be this slow, "
            "raise downloads.deadline_s or lower downloads.min_rate_kb_s in the policy (a "
            "policy that extends another lists them under loosen)")


def transfer_limits(settings: HttpSettings | None = None,
                    policy: _PolicyLike | None = None) -> TransferLimits:
    """The deadline a request keeps: the policy's (the schema's defaults without one),
    tightened by ``settings`` (a smaller deadline, a higher minimum rate)."""
    from safehub._policy.schema import DownloadsSection

    if policy is not None:
        downloads = policy.model.downloads
        deadline, rate = float(downloads.deadline_s), downloads.min_rate_kb_s * 1024.0
        d_from = _key_from("downloads.deadline_s", policy.where("downloads", "deadline_s"))
        r_from = _key_from("downloads.min_rate_kb_s",
                           policy.where("downloads", "min_rate_kb_s"))
    else:
        fields = DownloadsSection.model_fields
        deadline = float(fields["deadline_s"].default)
        rate = fields["min_rate_kb_s"].default * 1024.0
        d_from, r_from = "downloads.deadline_s (default)", "downloads.min_rate_kb_s (default)"
    if settings is not None and settings.deadline is not None and settings.deadline < deadline:
        deadline, d_from = settings.deadline, "HttpSettings.deadline"
    if settings is not None and settings.min_rate is not None and settings.min_rate > rate:
        rate, r_from = settings.min_rate, "HttpSettings.min_rate"
    return TransferLimits(deadline, rate, d_from, r_from)


def _key_from(key: str, where: str) -> str:
    return f"{key} ({where})" if where else key


@dataclass(frozen=True)
class DownloadResult:
    """What a finished download produced."""

    url: str  # the URL asked for
    final_url: str  # after redirects
    size: int
    sha256: str
    resumed: int  # how many times the body resumed with Range
    hops: tuple[str, ...] = ()  # every URL requested after the first (redirects), in order


class HttpError(FetchError):
    """The server answered with an HTTP error status (after any retries)."""

    def __init__(self, message: str, *, status: int, url: str, headers: dict[str, str],
                 body: bytes = b"", fix: str | None = None):
        super().__init__(message, subject=url, fix=fix)
        self.status = status
        self.url = url
        self.headers = headers
        self.body = body

    @property
    def server_message(self) -> str:
        """The ``message`` of a GitHub-style JSON error body, or a cleaned text excerpt."""
        try:
            data = json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            text = self.body[:200].decode("utf-8", "replace")
        else:
            text = str(data.get("message", "")) if isinstance(data, dict) else ""
        return "".join(c if c.isprintable() else " " for c in text).strip()[:200]


class _Retryable(Exception):
    """An attempt failed in a way worth repeating."""

    def __init__(self, reason: str, wait: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.wait = wait


@dataclass
class _Body:
    """State of a body across attempts (for Range resume)."""

    sink: BinaryIO
    hasher: Any = field(default_factory=hashlib.sha256)
    written: int = 0
    validator: str | None = None
    resumable: bool = False
    total: int | None = None
    resumed: int = 0
    hops: list[str] = field(default_factory=list)  # the last attempt's redirect hops

    def reset(self) -> None:
        """Start the body over (the server will send it from byte 0)."""
        self.sink.seek(0)
        self.sink.truncate()
        self.hasher = hashlib.sha256()
        self.written = 0
        self.total = None


class _Deadline:
    """The running clock of one request under :class:`TransferLimits`. ``size`` below is
    always the bytes received so far: an announced Content-Length earns no time."""

    def __init__(self, url: str, settings: HttpSettings, limits: TransferLimits):
        self.url = url
        self.settings = settings
        self.limits = limits
        self.started = time.monotonic()

    def allowed(self, size: int) -> float:
        return self.limits.allowed(size)

    def remaining(self, size: int) -> float:
        return self.started + self.allowed(size) - time.monotonic()

    def check(self, size: int, received: int) -> None:
        if self.remaining(size) <= 0:
            self.fail(size, received)

    def fail(self, size: int, received: int) -> NoReturn:
        raise self.limits.error(self.url, received)

    def timeout(self, size: int) -> float:
        """A socket timeout that never outlasts the deadline."""
        return max(0.001, min(self.settings.timeout, self.remaining(size)))


class _Watchdog:
    """Shuts the current connection down once the deadline has passed, so that no read
    (status line, headers, an error or redirect body, a trickled body) can outlast it.

    ``remaining`` is asked again when the timer fires: the deadline grows once the body's
    length is known."""

    def __init__(self, remaining: Callable[[], float]):
        self.remaining = remaining
        # The socket itself: http.client drops ``conn.sock`` once a response will close the
        # connection, while the response goes on reading from it.
        self.sock: socket.socket | None = None
        self.fired = False
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._stopped = False
        self._arm()

    def _arm(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._timer = threading.Timer(max(0.0, self.remaining()) + 0.01, self._fire)
            self._timer.daemon = True
            self._timer.start()

    def _fire(self) -> None:
        if self.remaining() > 0:
            self._arm()
            return
        self.fired = True
        sock = self.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            if self._timer is not None:
                self._timer.cancel()


class HttpClient:
    """Downloads with the guarantees listed in the module docstring."""

    def __init__(self, settings: HttpSettings, credentials: Credentials,
                 limits: TransferLimits | None = None):
        self.settings = settings
        self.credentials = credentials
        self.limits = limits or transfer_limits(settings)
        self.requests = 0  # connections opened, for diagnostics and tests

    # --- public --------------------------------------------------------------------------

    def get_json(self, url: str, *, check: HopCheck, max_bytes: int = 16 << 20,
                 accept: str = "application/vnd.github+json") -> Any:
        """GET ``url`` (an API request: its origin's token goes with it) and parse JSON
        (bounded by ``max_bytes``)."""
        import io

        buf = io.BytesIO()
        self.download(url, buf, check=check, max_bytes=max_bytes, accept=accept,
                      authenticate=True)
        try:
            return json.loads(buf.getvalue().decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise FetchError(f"the server sent invalid JSON: {exc}", subject=url,
                             fix="check that downloads.github_api points at a "
                             "GitHub-compatible REST API") from exc

    def download(self, url: str, sink: BinaryIO, *, check: HopCheck, max_bytes: int,
                 progress: ProgressCallback | None = None,
                 accept: str = "*/*", authenticate: bool = False) -> DownloadResult:
        """Stream ``url`` into ``sink`` (seekable, truncatable, empty), hashing on the way.

        ``authenticate``: send the origin's token (API and archive requests only). Weights
        are never authenticated: their URL is chosen by repo code (``hubconf.py``, the
        sandbox broker), which would otherwise read anything the token can."""
        url = str(_canonical(url))
        body = _Body(sink)
        deadline = _Deadline(url, self.settings, self.limits)
        attempt = 0
        while True:
            try:
                final = self._attempt(url, body, check=check, max_bytes=max_bytes,
                                      progress=progress, accept=accept, deadline=deadline,
                                      authenticate=authenticate)
                return DownloadResult(url, final, body.written, body.hasher.hexdigest(),
                                      body.resumed, tuple(body.hops))
            except _Retryable as exc:
                attempt += 1
                deadline.check(body.written, body.written)
                if attempt > self.settings.retries:
                    raise FetchError(
                        f"download failed after {attempt} attempts: {exc.reason}", subject=url,
                        fix="retry later; if the network is slow, raise the timeout "
                        "(Fetcher(http=HttpSettings(timeout=...)))",
                        cli_fix="retry later, on a faster or less busy network") from exc
                delay = min(self.settings.backoff * (2 ** (attempt - 1)),
                            self.settings.max_backoff)
                if exc.wait is not None:
                    delay = min(max(delay, exc.wait), self.settings.max_backoff)
                log.info("%s: %s; retrying in %.1fs (%d/%d)", url, exc.reason, delay, attempt,
                         self.settings.retries)
                time.sleep(max(0.0, min(delay, deadline.remaining(body.written))))
                deadline.check(body.written, body.written)
                if not (body.resumable and body.validator):
                    body.reset()

    # --- one attempt -----------------------------------------------------------------------

    def _attempt(self, url: str, body: _Body, *, check: HopCheck, max_bytes: int,
                 progress: ProgressCallback | None, accept: str, deadline: _Deadline,
                 authenticate: bool = False) -> str:
        extra = {"Accept": accept}
        resuming = body.written > 0 and body.resumable and body.validator is not None
        if resuming:
            extra["Range"] = f"bytes={body.written}-"
            extra["If-Range"] = str(body.validator)
        conn: http.client.HTTPConnection | None = None
        watch = _Watchdog(lambda: deadline.remaining(body.written))
        try:
            conn, resp, final = self._open(url, extra, check, deadline, body, watch,
                                           authenticate)
            if resp.status == 206 and resuming:
                if _content_range_start(resp.getheader("Content-Range", "")) != body.written:
                    body.resumable = False
                    raise _Retryable("the server answered a Range request with another range")
                body.resumed += 1
                log.info("%s: resuming at byte %d", url, body.written)
            elif resp.status == 200:
                if body.written:  # the server ignored Range (or the file changed): start over
                    body.reset()
                body.validator = _validator(resp)
                body.resumable = resp.getheader("Accept-Ranges", "").lower() == "bytes"
            else:
                raise self._status_error(resp, final, url)
            length = _content_length(resp)
            if body.total is None and length is not None:
                body.total = body.written + length
            if length is not None and body.written + length > max_bytes:
                raise FetchError(
                    f"the file is {body.written + length} bytes, over the limit of "
                    f"{max_bytes} bytes", subject=url,
                    fix="raise downloads.max_size_mb in the policy if this size is expected")
            self._stream(resp, body, url, max_bytes, progress, deadline, watch)
            if watch.fired:  # the body "ended" because the watchdog closed the connection
                deadline.fail(body.written, body.written)
            if body.total is not None and body.written < body.total:
                raise _Retryable(f"truncated body ({body.written} of {body.total} bytes)")
            return final
        except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, truncation
            if watch.fired:
                deadline.fail(body.written, body.written)
            if isinstance(exc, ssl.SSLError):
                raise FetchError(f"TLS error: {exc}", subject=url,
                                 fix="check the server's certificate and the system CA store"
                                 ) from exc
            if _no_network(exc):
                # Nothing to wait for: retrying a refused connection or an unknown host
                # only delays the answer. Say how to work from the cache instead.
                raise FetchError(
                    f"no network: {_describe(exc)}", subject=url,
                    fix="work offline from safehub's cache: set SAFEHUB_OFFLINE=1 (or "
                    "downloads.offline = true in the policy); fill the cache by running the "
                    "same call once on a machine with network access (it keeps repos and "
                    "files in <hub dir>/safehub)") from exc
            raise _Retryable(_describe(exc)) from exc
        finally:
            watch.stop()
            if conn is not None:
                conn.close()

    def _stream(self, resp: http.client.HTTPResponse, body: _Body, url: str, max_bytes: int,
                progress: ProgressCallback | None, deadline: _Deadline,
                watch: _Watchdog) -> None:
        while True:
            # read1: at most one read from the socket, so a server sending a byte at a time
            # is seen (and timed) read by read instead of filling a whole chunk unnoticed.
            size = body.written
            deadline.check(size, body.written)
            if watch.sock is not None:
                watch.sock.settimeout(deadline.timeout(size))
            chunk = resp.read1(CHUNK)
            if not chunk:
                return
            if body.written + len(chunk) > max_bytes:
                raise FetchError(f"the download exceeded the limit of {max_bytes} bytes",
                                 subject=url, fix="raise downloads.max_size_mb in the policy "
                                 "if this size is expected")
            body.sink.write(chunk)
            body.hasher.update(chunk)
            body.written += len(chunk)
            if progress is not None:
                progress(Progress(url, body.written, body.total))

    def _open(self, url: str, extra: dict[str, str], check: HopCheck, deadline: _Deadline,
              body: _Body, watch: _Watchdog, authenticate: bool = False
              ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse, str]:
        """Follow redirects, checking each hop; returns the final connection and response.

        Every hop is the canonical URL: that string is checked, requested, and decides
        whether a token may go with it."""
        start = Origin.of(url)
        body.hops = []
        left_origin = False
        previous: str | None = None
        for _ in range(MAX_REDIRECTS + 1):
            parsed = _canonical(url, previous)
            url = str(parsed)
            _require_http(url)
            if previous is not None and parse_url(previous).scheme == "https" \
                    and parsed.scheme != "https":
                raise FetchError(f"refused a redirect from https to {url}", subject=previous,
                                 fix="download from a server that keeps https on every hop")
            check(url, previous)
            if previous is not None:
                body.hops.append(url)
            deadline.check(body.written, body.written)
            left_origin = left_origin or Origin.of(url) != start
            headers = {"User-Agent": self.settings.user_agent, "Accept-Encoding": "identity",
                       **extra}
            token = (self.credentials.token_for(url)
                     if authenticate and not left_origin else None)
            if token:
                headers["Authorization"] = f"Bearer {token}"
            conn = self._connect(parsed, deadline.timeout(body.written))
            try:
                conn.request("GET", parsed.target, headers=headers)
                watch.sock = conn.sock
                resp = conn.getresponse()
            except BaseException:
                conn.close()
                raise
            self.requests += 1
            if resp.status not in _REDIRECTS:
                return conn, resp, url
            location = resp.getheader("Location")
            resp.read(_ERROR_BODY_LIMIT)
            conn.close()
            if not location:
                raise FetchError(f"HTTP {resp.status} redirect without a Location", subject=url)
            # urljoin would silently drop tabs and newlines: refuse them in the raw header.
            if any(not ("!" <= c <= "~") for c in location.strip(" ")):
                # Quoted as received, so a relative one is redacted here (no '://').
                shown = ascii(redact_reference(location))
                raise FetchError(f"refused a redirect to {shown}: it holds control "
                                 "characters, whitespace or non-ASCII text", subject=url,
                                 fix="download from the final URL directly")
            previous, url = url, urljoin(url, location.strip(" "))
        raise FetchError(f"more than {MAX_REDIRECTS} redirects", subject=url,
                         fix="download from the final URL directly")

    def _connect(self, parts: CanonicalURL, timeout: float) -> http.client.HTTPConnection:
        host, port = parts.hostname, parts.port
        if parts.scheme == "http":
            return http.client.HTTPConnection(host, port, timeout=timeout)
        context = self.settings.ssl_context or ssl.create_default_context()
        proxy = _https_proxy(parts.host)
        if proxy is None:
            return http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
        p = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        conn = http.client.HTTPSConnection(p.hostname or "", p.port or 80, timeout=timeout,
                                           context=context)
        conn.set_tunnel(host, port)
        return conn

    # --- errors ----------------------------------------------------------------------------

    def _status_error(self, resp: http.client.HTTPResponse, final: str,
                      url: str) -> Exception:
        headers = {k.lower(): v for k, v in resp.getheaders()}
        try:
            data = resp.read(_ERROR_BODY_LIMIT)
        except (OSError, http.client.HTTPException):
            data = b""
        status = resp.status
        where = url if final == url else f"{url} (redirected to {final})"
        if _is_rate_limited(status, headers):
            reset = _rate_limit_reset(headers)
            return HttpError(
                f"HTTP {status}: rate limit exceeded{reset}", status=status, url=where,
                headers=headers, body=data,
                fix="set GITHUB_TOKEN (authenticated requests get a much higher limit), or pin "
                "the commit (a cached full commit SHA needs no API call)")
        if status in _RETRY_STATUS:
            wait = _retry_after(headers.get("retry-after"))
            return _Retryable(f"HTTP {status} {resp.reason}", wait)
        error = HttpError(f"HTTP {status} {resp.reason}", status=status, url=where,
                          headers=headers, body=data)
        detail = error.server_message
        if detail:
            error.message = f"{error.message}: {detail}"
            error.args = (error.message,)
        if status in (401, 403):
            error.fix = ("the server refused the credentials: set a valid GITHUB_TOKEN (for "
                         f"the API host) or {_env_hint(final)}")
        elif status == 404:
            error.fix = "check the URL; a private repository or file needs a token"
        return error


def _canonical(url: str, previous: str | None = None) -> CanonicalURL:
    """The canonical form of a URL to request; a malformed one is refused."""
    try:
        return parse_url(url)
    except InvalidIdentifier as exc:
        if previous is None:
            raise
        raise InvalidIdentifier(f"refused a redirect from {previous}: {exc.message}",
                                subject=exc.subject, fix="download from the final URL "
                                "directly") from None


def _require_http(url: str) -> None:
    if parse_url(url).scheme == "http" and not is_loopback_http(url):
        raise FetchError("plain http is allowed only to loopback addresses", subject=url,
                         fix="use an https:// URL")


def _env_hint(url: str) -> str:
    origin = Origin.of(url)
    return (f"{ENV_PREFIX}<ID> with {ENV_PREFIX}<ID>_ORIGIN={origin.scheme}://{origin.host}"
            f":{origin.port} (for that origin)")


def _content_length(resp: http.client.HTTPResponse) -> int | None:
    value = resp.getheader("Content-Length")
    if value is None or resp.getheader("Transfer-Encoding", "").lower() == "chunked":
        return None
    try:
        length = int(value.strip())
    except ValueError:
        return None
    return length if length >= 0 else None


def _content_range_start(value: str) -> int | None:
    # "bytes START-END/TOTAL"
    try:
        unit, rest = value.split(" ", 1)
        if unit.lower() != "bytes":
            return None
        return int(rest.split("-", 1)[0])
    except ValueError:
        return None


def _validator(resp: http.client.HTTPResponse) -> str | None:
    etag = resp.getheader("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return resp.getheader("Last-Modified")


def _is_rate_limited(status: int, headers: dict[str, str]) -> bool:
    if status not in (403, 429):
        return False
    return headers.get("x-ratelimit-remaining") == "0" or (
        status == 403 and "retry-after" in headers)


def _rate_limit_reset(headers: dict[str, str]) -> str:
    reset = headers.get("x-ratelimit-reset")
    if reset is not None:
        try:
            when = datetime.fromtimestamp(int(reset), tz=timezone.utc)
        except (ValueError, OverflowError, OSError):
            return ""
        minutes = max(0, round((when - datetime.now(timezone.utc)).total_seconds() / 60))
        return f"; it resets at {when:%Y-%m-%d %H:%M:%S} UTC (in about {minutes} min)"
    wait = _retry_after(headers.get("retry-after"))
    return f"; retry after {wait:.0f} s" if wait is not None else ""


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _https_proxy(host: str) -> str | None:
    """The proxy for ``host`` (as in a URL: IPv6 in brackets), or None."""
    if is_loopback_http(f"http://{host}/"):
        return None
    proxies = urllib.request.getproxies()
    proxy = proxies.get("https")
    if not proxy or urllib.request.proxy_bypass(host.strip("[]")):
        return None
    return proxy


def _no_network(exc: BaseException) -> bool:
    """A refused connection, an unknown host or no route: the network is not there."""
    import errno
    import socket

    if isinstance(exc, (socket.gaierror, ConnectionRefusedError)):
        return True
    return isinstance(exc, OSError) and exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH,
                                                      errno.ENETDOWN)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out waiting for the server"
    if isinstance(exc, http.client.IncompleteRead):
        return f"truncated body ({len(exc.partial)} bytes in the last read)"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
