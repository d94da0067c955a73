"""URL checks shared by the policy and the fetch layer."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

__all__ = ["host_of", "is_loopback_http", "url_matches_prefix"]

_DEFAULT_PORTS = {"http": 80, "https": 443}


def host_of(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def is_loopback_http(url: str) -> bool:
    """Plain http to a loopback address (127.0.0.0/8, ::1, localhost)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        return False
    host = parts.hostname.lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _port(scheme: str, port: int | None) -> int | None:
    return port if port is not None else _DEFAULT_PORTS.get(scheme)


def url_matches_prefix(url: str, prefix: str) -> bool:
    """Whether ``url`` falls under the allowlisted ``prefix``, compared by parts.

    Scheme, host and port must be equal (so ``https://example.com`` never matches
    ``https://example.com.evil.org`` or ``https://example.com@evil.org``); URLs with
    credentials never match; the path must start with the prefix's path at a segment
    boundary unless the prefix path ends with ``/``.
    """
    try:
        u, p = urlsplit(url), urlsplit(prefix)
        u_port, p_port = _port(u.scheme, u.port), _port(p.scheme, p.port)
    except ValueError:
        return False
    if u.username or u.password or u.scheme != p.scheme:
        return False
    if not p.hostname:  # "https://" alone: any host over that scheme
        return bool(u.hostname) and prefix == f"{p.scheme}://"
    if (u.hostname or "").lower() != (p.hostname or "").lower() or u_port != p_port:
        return False
    base = p.path
    path = u.path or "/"
    if not base or base == "/":
        return True
    if not path.startswith(base):
        return False
    return base.endswith("/") or len(path) == len(base) or path[len(base)] == "/"
