"""Which token may be sent to which origin.

A token belongs to exactly one origin (scheme, host, port) and is sent only
there: the HTTP client drops it for the rest of a redirect chain as soon as a
hop leaves the origin it started on.

Sources, first match wins:

1. tokens passed in code (``Fetcher(tokens={"ghe.example.com": "..."})``),
   keyed by host or ``host:port``;
2. ``SAFEHUB_TOKEN_<HOST>`` in the environment, ``<HOST>`` being the host name
   upper-cased with every other character replaced by ``_``
   (``SAFEHUB_TOKEN_GHE_EXAMPLE_COM``);
3. ``GITHUB_TOKEN`` (then ``GH_TOKEN``), for the origin of the policy's
   ``downloads.github_api`` only: the API and archive downloads that stay on it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["Credentials", "Origin", "env_name_for"]

_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Origin:
    """Scheme, host and port of a URL: what a token is bound to."""

    scheme: str
    host: str
    port: int | None

    @classmethod
    def of(cls, url: str) -> Origin:
        """The origin of ``url`` (default ports filled in)."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        try:
            port = parts.port
        except ValueError:
            port = None
        return cls(scheme, (parts.hostname or "").lower(), port or _DEFAULT_PORTS.get(scheme))

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


def env_name_for(host: str) -> str:
    """The environment variable that holds the token for ``host``."""
    return "SAFEHUB_TOKEN_" + re.sub(r"[^A-Z0-9]", "_", host.upper())


class Credentials:
    """Tokens by origin. ``repr`` never shows a token."""

    def __init__(self, api_base: str, tokens: Mapping[str, str] | None = None,
                 environ: Mapping[str, str] | None = None):
        env = os.environ if environ is None else environ
        self._api = Origin.of(api_base)
        self._tokens = {k.lower(): v for k, v in (tokens or {}).items() if v}
        self._env = {k: v for k, v in env.items() if k.startswith("SAFEHUB_TOKEN_") and v}
        self._github = env.get("GITHUB_TOKEN") or env.get("GH_TOKEN") or None

    def token_for(self, url: str) -> str | None:
        """The token for the origin of ``url``, or None."""
        origin = Origin.of(url)
        if not origin.host:
            return None
        for key in (f"{origin.host}:{origin.port}", origin.host):
            if key in self._tokens:
                return self._tokens[key]
        env_token = self._env.get(env_name_for(origin.host))
        if env_token:
            return env_token
        if origin == self._api:
            return self._github
        return None

    def __repr__(self) -> str:
        hosts = sorted({*self._tokens, *self._env})
        return f"Credentials(api={self._api}, hosts={hosts}, github_token={bool(self._github)})"
