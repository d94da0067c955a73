"""Which token may be sent to which origin.

A token belongs to exactly one origin (scheme, host, port, compared in canonical
form: see :mod:`safehub._policy.urls`) and is sent only there: never to another
port or scheme of the same host, never to another host, and the HTTP client drops
it for the rest of a redirect chain as soon as a hop leaves the origin it started
on.

Sources, first match wins:

1. tokens passed in code, keyed by origin:
   ``Fetcher(tokens={"https://ghe.example.com:8443": "..."})`` (a key without a
   scheme is refused rather than guessed);
2. a pair of environment variables, ``SAFEHUB_TOKEN_<ID>`` holding the token and
   ``SAFEHUB_TOKEN_<ID>_ORIGIN`` naming its origin (``<ID>`` is any name of
   letters, digits and ``_``, e.g. ``SAFEHUB_TOKEN_GHE`` and
   ``SAFEHUB_TOKEN_GHE_ORIGIN=https://ghe.example.com``). A token without its
   ``_ORIGIN`` (or with a malformed one) is never sent, and a warning says so;
   two different tokens for one origin are an error when that origin is asked;
3. ``GITHUB_TOKEN`` (then ``GH_TOKEN``), for the origin of the policy's
   ``downloads.github_api`` only: the API and archive downloads that stay on it.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from safehub._policy.urls import parse_url
from safehub.errors import FetchError, InvalidIdentifier

__all__ = ["ENV_PREFIX", "Credentials", "Origin"]

log = logging.getLogger("safehub.fetch")

ENV_PREFIX = "SAFEHUB_TOKEN_"
_ORIGIN_SUFFIX = "_ORIGIN"
_ID_RE = re.compile(r"[A-Za-z0-9_]+")


@dataclass(frozen=True)
class Origin:
    """Scheme, host and port of a canonical URL: what a token is bound to."""

    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, url: str) -> Origin:
        """The origin of ``url`` (default port filled in); an empty one when malformed."""
        try:
            parsed = parse_url(url)
        except InvalidIdentifier:
            return cls("", "", 0)
        return cls(*parsed.origin)

    @classmethod
    def parse(cls, text: str) -> Origin:
        """An origin as configured: ``scheme://host[:port]`` with no path, query or user."""
        if "://" not in text:
            raise InvalidIdentifier(f"{text!r} names no origin", subject=text,
                                    fix=f"write the origin with its scheme: https://{text}")
        parsed = parse_url(text)
        if parsed.target != "/":
            raise InvalidIdentifier(f"{text!r} is not an origin (it has a path or query)",
                                    subject=text, fix="give scheme://host[:port] only")
        return cls(*parsed.origin)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


class Credentials:
    """Tokens by origin. ``repr`` never shows a token."""

    def __init__(self, api_base: str, tokens: Mapping[str, str] | None = None,
                 environ: Mapping[str, str] | None = None):
        env = os.environ if environ is None else environ
        self._api = Origin.of(api_base)
        self._tokens: dict[Origin, str] = {}
        for key, token in (tokens or {}).items():
            if token:
                self._tokens[Origin.parse(key)] = token
        self._env: dict[Origin, dict[str, str]] = {}  # origin -> {variable: token}
        self._load_env(env)
        self._github = env.get("GITHUB_TOKEN") or env.get("GH_TOKEN") or None

    def _load_env(self, env: Mapping[str, str]) -> None:
        for name, token in env.items():
            if not name.startswith(ENV_PREFIX) or name.endswith(_ORIGIN_SUFFIX) or not token:
                continue
            ident = name[len(ENV_PREFIX):]
            origin_var = name + _ORIGIN_SUFFIX
            origin_text = env.get(origin_var, "")
            if not _ID_RE.fullmatch(ident) or not origin_text:
                log.warning("%s is ignored: name its origin in %s (e.g. https://host:port)",
                            name, origin_var)
                continue
            try:
                origin = Origin.parse(origin_text.strip())
            except InvalidIdentifier as exc:
                log.warning("%s is ignored: %s=%r: %s", name, origin_var, origin_text,
                            exc.message)
                continue
            self._env.setdefault(origin, {})[name] = token

    def token_for(self, url: str) -> str | None:
        """The token for the origin of ``url``, or None.

        Raises :class:`FetchError` when the environment names two different tokens
        for that origin (which one to send would be a guess).
        """
        origin = Origin.of(url)
        if not origin.host:
            return None
        if origin in self._tokens:
            return self._tokens[origin]
        found = self._env.get(origin, {})
        if len(set(found.values())) > 1:
            raise FetchError(f"{' and '.join(sorted(found))} are all tokens for {origin}",
                             subject=url, fix="keep one SAFEHUB_TOKEN_<ID> per origin")
        if found:
            return next(iter(found.values()))
        if origin == self._api:
            return self._github
        return None

    def __repr__(self) -> str:
        origins = sorted(str(o) for o in {*self._tokens, *self._env})
        return (f"Credentials(api={self._api}, origins={origins}, "
                f"github_token={bool(self._github)})")
