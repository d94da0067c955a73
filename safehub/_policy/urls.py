"""One canonical form per URL: what the policy decides on is what the network asks for.

:func:`canonical_url` applies RFC 3986 section 6 normalisation to an http(s) URL:
scheme and host in lower case, a trailing dot of the host dropped, the default
port dropped, an empty query (``?``) and the fragment dropped, percent-escapes of
unreserved characters decoded and every other escape upper-cased, and ``.`` and
``..`` path segments removed. The allowlist, pins, lockfile, cache key,
credentials and the request line all use that one string, on every redirect hop
and for every broker request from the sandbox.

Spellings that servers read in different ways are refused instead of guessed:
userinfo (``user@host``), backslashes, encoded ``/`` or ``\\`` (``%2F``,
``%5C``), dot segments that appear only once decoded (``%2e%2e``) or that a
server may read as one (``..;``), double-encoded dots and separators
(``%252e``), in the path any escape of an escape (``%25`` then two hex digits, as in
triple-encoded ``%25252e``), overlong UTF-8 (``%C0%AE``) and characters that Unicode
NFKC folds to ``.``, ``/``, ``\\`` or ``%`` (fullwidth ``%EF%BC%8E``), segments made
only of dots and spaces once decoded (``...``, ``..%20``, which Windows servers trim),
empty path segments (``//``, which some servers merge before resolving ``..``),
control characters, whitespace and any non-ASCII character (hosts must be given in their
ASCII ``xn--`` form: no IDNA mapping is applied), malformed percent-escapes, ports and
IPv6 literals, and IPv4 addresses in any form but dotted-quad.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import unquote

from safehub.errors import InvalidIdentifier

__all__ = [
    "CanonicalURL",
    "canonical_url",
    "host_of",
    "is_loopback_http",
    "parse_url",
    "url_matches_prefix",
]

_DEFAULT_PORTS = {"http": 80, "https": 443}
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# RFC 3986 pchar without pct-encoded: unreserved / sub-delims / ":" / "@".
_PCHAR = _UNRESERVED | frozenset("!$&'()*+,;=:@")
_URL_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)([^?#]*)(?:\?([^#]*))?(?:#.*)?",
                     re.DOTALL)
_LABEL_RE = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_HEX = "0123456789ABCDEFabcdef"


@dataclass(frozen=True)
class CanonicalURL:
    """A parsed canonical URL. ``str()`` is the canonical string."""

    scheme: str
    host: str  # lower case; an IPv6 literal keeps its brackets
    port: int  # the effective port (default filled in)
    path: str  # starts with "/"
    query: str | None  # None: no query (an empty "?" is dropped)

    @property
    def origin(self) -> tuple[str, str, int]:
        """(scheme, host, port): what a credential is bound to."""
        return self.scheme, self.host, self.port

    @property
    def netloc(self) -> str:
        """``host`` or ``host:port`` (the default port is never written)."""
        if self.port == _DEFAULT_PORTS.get(self.scheme):
            return self.host
        return f"{self.host}:{self.port}"

    @property
    def target(self) -> str:
        """The request target: path and query."""
        return self.path + (f"?{self.query}" if self.query is not None else "")

    @property
    def hostname(self) -> str:
        """The host as a socket wants it (IPv6 without brackets)."""
        return self.host[1:-1] if self.host.startswith("[") else self.host

    def __str__(self) -> str:
        return f"{self.scheme}://{self.netloc}{self.target}"


def _bad(url: str, why: str, fix: str = "use the URL exactly as the server publishes it"
         ) -> InvalidIdentifier:
    shown = url if len(url) <= 300 else url[:300] + "..."
    return InvalidIdentifier(f"malformed URL: {why}", subject=ascii(shown)[1:-1], fix=fix)


def parse_url(url: str) -> CanonicalURL:
    """Parse and normalise an http(s) URL; raises :class:`InvalidIdentifier`."""
    if not isinstance(url, str):
        raise _bad(repr(url), "not a string")
    for ch in url:
        if not ("!" <= ch <= "~"):
            raise _bad(url, f"it holds {ch!a} (control characters, whitespace and "
                       "non-ASCII characters are refused)", "percent-encode it")
    if "\\" in url:
        raise _bad(url, "it holds a backslash (servers read it as '/' or as data)")
    m = _URL_RE.fullmatch(url)
    if m is None:
        raise _bad(url, "not an absolute scheme://host/path URL")
    scheme = m.group(1).lower()
    if scheme not in _DEFAULT_PORTS:
        raise _bad(url, f"the {scheme} scheme (only http and https)", "use an https:// URL")
    host, port = _authority(url, m.group(2), scheme)
    path = _path(url, m.group(3))
    query = m.group(4)
    if query is not None:
        query = _escapes(url, query, _PCHAR | {"/", "?"}, "query") or None
    return CanonicalURL(scheme, host, port, path, query)


def canonical_url(url: str) -> str:
    """The canonical string of an http(s) URL; raises :class:`InvalidIdentifier`."""
    return str(parse_url(url))


def _authority(url: str, authority: str, scheme: str) -> tuple[str, int]:
    if "@" in authority:
        raise _bad(url, "it names a user (user@host): credentials never go in URLs",
                   "remove the user part; configure a token for the origin instead")
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise _bad(url, "an IPv6 literal without its closing ']'")
        literal, rest = authority[1:end], authority[end + 1:]
        if "%" in literal or literal.lower().startswith("v"):
            raise _bad(url, "an IPv6 zone or IPvFuture literal")
        try:
            host = f"[{ipaddress.IPv6Address(literal).compressed}]"
        except ValueError as exc:
            raise _bad(url, f"an invalid IPv6 literal ({exc})") from None
        if rest and not rest.startswith(":"):
            raise _bad(url, "text after the IPv6 literal")
        port_text = rest[1:] if rest else ""
    else:
        raw_host, _, port_text = authority.partition(":")
        if ":" in port_text:
            raise _bad(url, "more than one ':' in the host (IPv6 literals need brackets)")
        host = _reg_name(url, raw_host)
    return host, _port(url, port_text, scheme)


def _reg_name(url: str, raw: str) -> str:
    host = raw.lower()
    if host.endswith(".") and len(host) > 1:
        host = host[:-1]  # "example.com." is the same host as "example.com"
    if not host:
        raise _bad(url, "no host")
    labels = host.split(".")
    if any(not _LABEL_RE.fullmatch(label) for label in labels) or len(host) > 253:
        raise _bad(url, f"{raw!r} is not a host name (letters, digits, '-' and '_' in "
                   "dot-separated labels; write international names as xn--)")
    last = labels[-1]
    if last.isdigit() or (last.startswith("0x") and all(c in _HEX for c in last[2:])):
        # Numeric hosts: only the dotted-quad form (no 127.1, 0x7f.0.0.1, 2130706433, 0127...).
        try:
            address = ipaddress.IPv4Address(host)
        except ValueError:
            raise _bad(url, f"{raw!r} is not a dotted-quad IPv4 address") from None
        if str(address) != host:
            raise _bad(url, f"{raw!r} is not a canonical dotted-quad IPv4 address")
    return host


def _port(url: str, text: str, scheme: str) -> int:
    if not text:
        return _DEFAULT_PORTS[scheme]
    if not text.isdigit() or len(text) > 5 or not 0 < int(text) < 65536:
        raise _bad(url, f"invalid port {text!r}")
    return int(text)


def _escapes(url: str, text: str, allowed: frozenset[str] | set[str], part: str) -> str:
    """Decode escapes of unreserved characters, upper-case the rest, refuse the ambiguous."""
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "%":
            pair = text[i + 1:i + 3]
            if len(pair) != 2 or pair[0] not in _HEX or pair[1] not in _HEX:
                raise _bad(url, f"a malformed percent-escape in the {part}")
            value = int(pair, 16)
            decoded = chr(value)
            if decoded in _UNRESERVED:
                out.append(decoded)
            elif part == "path" and value in (0x2F, 0x5C):
                raise _bad(url, f"an encoded {'/' if value == 0x2F else chr(92)} (%{pair}) "
                           "in the path: servers disagree on what it means")
            elif value < 0x20 or value == 0x7F:
                raise _bad(url, f"an encoded control character (%{pair})")
            else:
                out.append("%" + pair.upper())
            i += 3
            continue
        if ch not in allowed:
            raise _bad(url, f"{ch!r} is not allowed in a URL {part}", "percent-encode it")
        out.append(ch)
        i += 1
    result = "".join(out)
    # Checked on the result, so that "%25%32%65" (which becomes "%252e") is caught too: a
    # server that decodes twice would read it as '.', '/' or '\'.
    if re.search(r"%25(?:2[EF]|5C)", result, re.IGNORECASE):
        raise _bad(url, f"a double-encoded '.', '/' or '\\' in the {part}")
    if part == "path":
        _refuse_folded(url, result)
    return result


# Overlong UTF-8 (C0/C1 lead bytes; E0 80-9F and F0 80-8F starts): never valid, but some
# decoders fold them to ASCII ('%C0%AE' to '.').
_OVERLONG_RE = re.compile(r"%C[01]|%E0%[89][0-9A-F]|%F0%8[0-9A-F]", re.IGNORECASE)
_FOLDS_TO = frozenset("./\\%")


def _refuse_folded(url: str, segment: str) -> None:
    """Refuse a path segment that a server decoding more than once, or folding characters,
    could read as something else: any escape of an escape (``%25`` then two hex digits,
    e.g. triple-encoded ``%25252e``), overlong UTF-8, or a character that Unicode NFKC
    maps to '.', '/', '\\' or '%' (fullwidth U+FF0E, one-dot leader U+2024...)."""
    if re.search(r"%25[0-9A-F]{2}", segment, re.IGNORECASE):
        raise _bad(url, "a multiply-encoded escape (%25 followed by hex digits) in the path")
    if _OVERLONG_RE.search(segment):
        raise _bad(url, "an overlong UTF-8 sequence in the path")
    for ch in unquote(segment, errors="replace"):
        if ord(ch) > 0x7F and _FOLDS_TO & set(unicodedata.normalize("NFKC", ch)):
            raise _bad(url, f"a character that Unicode folding reads as '.', '/', '\\' or '%' "
                       f"(U+{ord(ch):04X}) in the path")


def _path(url: str, raw: str) -> str:
    if not raw:
        return "/"
    segments = raw.split("/")[1:]
    if any(s == "" for s in segments[:-1]):
        raise _bad(url, "an empty path segment ('//'): servers that merge slashes read "
                   "the path differently")
    out: list[str] = []
    for raw_segment in segments:
        segment = _escapes(url, raw_segment, _PCHAR, "path")
        if segment in (".", "..") and raw_segment != segment:
            raise _bad(url, f"an encoded dot segment ({raw_segment!r})")
        # What a server that decodes everything, drops ";params" (Tomcat) or trims trailing
        # dots and spaces (Windows) could read as "." or "..": refused, not guessed.
        seen = unquote(segment).split(";", 1)[0]
        if segment not in (".", "..") and seen and not seen.strip(". "):
            raise _bad(url, f"a path segment that servers may read as a dot segment "
                       f"({raw_segment!r})")
        out.append(segment)
    return _remove_dot_segments(out)


def _remove_dot_segments(segments: list[str]) -> str:
    """RFC 3986 section 5.2.4 on a split absolute path (``..`` stops at the root)."""
    stack: list[str] = []
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == ".":
            if last:
                stack.append("")
        elif segment == "..":
            if stack:
                stack.pop()
            if last:
                stack.append("")
        else:
            stack.append(segment)
    return "/" + "/".join(stack)


def host_of(url: str) -> str:
    """The lower-case host of ``url`` ("" when it has none or is malformed)."""
    try:
        return parse_url(url).hostname
    except InvalidIdentifier:
        return ""


def is_loopback_http(url: str) -> bool:
    """Plain http to a loopback address (127.0.0.0/8, ::1, localhost)."""
    try:
        parts = parse_url(url)
    except InvalidIdentifier:
        return False
    if parts.scheme != "http":
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


def url_matches_prefix(url: str, prefix: str) -> bool:
    """Whether ``url`` falls under the allowlisted ``prefix``, both canonicalised.

    Scheme, host and port must be equal (so ``https://example.com`` never matches
    ``https://example.com.evil.org`` or ``https://example.com@evil.org``); the
    canonical path must start with the prefix's canonical path at a segment
    boundary (``/team`` covers ``/team`` and ``/team/...``, never ``/team-evil``);
    a prefix with a query never matches. A malformed URL or prefix never matches.
    """
    try:
        u = parse_url(url)
    except InvalidIdentifier:
        return False
    if prefix.lower() in ("https://", "http://"):  # any host over that scheme
        return u.scheme == prefix[:-3].lower()
    try:
        p = parse_url(prefix)
    except InvalidIdentifier:
        return False
    if p.query is not None or u.origin != p.origin:
        return False
    base, path = p.path, u.path
    if base == "/":
        return True
    if base.endswith("/"):
        return path.startswith(base)
    return path == base or path.startswith(base + "/")
