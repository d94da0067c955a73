"""The one output discipline for text that came from a file, a repository or a server.

Such text (file names, entrypoint names, docstrings, exception messages, server bodies) must
not be able to start a new line, move the cursor, reorder what follows or break a format.

- ``escape_line`` makes it one inert line: every character in the Unicode categories Cc
  (C0, DEL, C1, including ESC, CR, LF, TAB), Cf (bidi embeddings, overrides and isolates,
  U+061C, U+200E/F, zero-width characters), Cs (lone surrogates), Zl and Zp (U+2028/2029) is
  written as a visible escape. A lone surrogate U+DC80..U+DCFF is how Python carries an
  undecodable byte of a file name (``surrogateescape``), so it is shown as that byte, ``\\xNN``.
- ``escape_block`` shows multi-line text (docstrings, a child's traceback) as an indented,
  marked block: every line escaped, every line prefixed, so none starts at column 0.
- ``json_text`` turns text into something every JSON encoder and decoder accepts (no lone
  surrogates); ``raw_bytes_b64`` gives the original bytes of a name that needed it.
- Credentials inside URLs never reach a report, a log or an error: every one of these
  functions first applies ``redact_secrets``, which writes a URL's userinfo
  (``https://user:token@host``) and the values of query parameters named like credentials
  (``token``, ``X-Amz-Signature``, ``X-Amz-Security-Token``, Azure's ``sig``, ``api_key``...:
  what a signed redirect target or a mistyped command line carries) as ``***``.
"""

from __future__ import annotations

import base64
import logging
import re
import unicodedata
from typing import Any
from urllib.parse import unquote_plus

__all__ = [
    "BLOCK_MARK",
    "Block",
    "LogFormatter",
    "escape_block",
    "escape_char",
    "escape_line",
    "inert_json",
    "inert_toml",
    "is_inert",
    "json_clean",
    "json_text",
    "raw_bytes_b64",
    "redact_secrets",
]

# The characters that may not reach a terminal or a line-oriented log unescaped.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
BLOCK_MARK = "| "
# A fast path: most text is plain ASCII without controls.
_PLAIN = re.compile(r"[\x20-\x7e]*")


# A URL anywhere in a text: scheme://, then up to whitespace, a quote or a backslash (so in
# serialized JSON it never reaches past its string).
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>\\]*")
# A URL's userinfo, found on its own: RFC 3986 allows "'" there (a sub-delimiter), which
# ends a URL match above, so "https://u:pa'ss@h" showed the whole password.
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s\"<>\\]*@")
_QUERY_PARAM = re.compile(r"(^|[&;])([^=&;#]*)=([^&;#]*)")
_TRAILING = re.compile(r"[.,;:!)\]]+$")
# Query parameter names that carry a credential: any name containing one of these words...
_SECRET_WORDS = ("token", "secret", "signature", "password", "passwd", "credential", "apikey",
                 "session", "private")
# ...or one of these as a whole part (between '-', '_' or '.'): 'sig' but not 'design'.
_SECRET_PARTS = frozenset({"sig", "key", "auth", "pwd", "pass", "authorization"})
REDACTED = "***"


def _secret_name(name: str) -> bool:
    # As the server reads the name: percent-decoded ('%74oken' is 'token').
    lower = unquote_plus(name).lower()
    return (any(word in lower for word in _SECRET_WORDS)
            or any(part in _SECRET_PARTS for part in re.split(r"[-_.]", lower)))


def _redact_url(url: str) -> str:
    tail = _TRAILING.search(url)  # sentence punctuation after a URL is not part of it
    end = tail.start() if tail else len(url)
    return redact_reference(url[:end]) + url[end:]


def _redact_params(params: str) -> str:
    return _QUERY_PARAM.sub(
        lambda p: p.group(1) + p.group(2) + "=" + (
            REDACTED if _secret_name(p.group(2)) and p.group(3) else p.group(3)), params)


def redact_secrets(text: str) -> str:
    """``text`` with the credentials in its URLs (userinfo, credential query values)
    written as ``***``; the rest unchanged."""
    if "://" not in text:
        return text
    text = _USERINFO.sub(lambda m: m.group(1) + REDACTED + "@", text)
    return _URL.sub(lambda m: _redact_url(m.group()), text)


def redact_reference(ref: str) -> str:
    """``ref``, a URL reference as a server sent it (absolute, ``//host/...``, ``/path?...``
    or ``path?...``), with its credentials (userinfo, credential query and fragment values)
    redacted; :func:`redact_secrets` applies it to each absolute URL in a text (a relative
    one has no ``://`` for it to find)."""
    # Read as one reference (a header value): whitespace does not end it here.
    m = _REFERENCE.fullmatch(ref)
    if m is None:  # the pattern matches any text; kept for the type checker
        return redact_secrets(ref)
    scheme, authority, rest = m.group(1) or "", m.group(2) or "", m.group(3)
    if "@" in authority:
        authority = "//" + REDACTED + "@" + authority.rpartition("@")[2]
    path, mark, query = rest.partition("?")
    if not mark:
        path, query = "", rest
    query, hash_, fragment = query.partition("#")
    if not mark and not hash_:
        return scheme + authority + rest
    return (scheme + authority + path + mark + (_redact_params(query) if mark else query)
            + hash_ + _redact_params(fragment))


_REFERENCE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*:)?(//[^/?#]*)?(.*)", re.DOTALL)


class Block(str):
    """Text whose line structure is safehub's own (e.g. ``SafehubError.diagnostics()``):
    each line is already escaped, and its lines after the first are indented."""



def escape_char(ch: str) -> str:
    """The visible escape for one unsafe character."""
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, carried by surrogateescape
        return f"\\x{code - 0xDC00:02x}"
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(ch)
    if named:
        return named
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _unsafe(ch: str) -> bool:
    return unicodedata.category(ch) in _UNSAFE_CATEGORIES


def escape_line(text: object, limit: int | None = None) -> str:
    """``text`` as one inert line (see the module docstring); cut to ``limit`` characters."""
    s = redact_secrets(text if isinstance(text, str) else str(text))
    if limit is not None and len(s) > limit:
        s = s[:limit] + f"... [{len(s) - limit} more characters]"
    if _PLAIN.fullmatch(s):
        return s
    return "".join(escape_char(ch) if _unsafe(ch) else ch for ch in s)


def is_inert(text: str) -> bool:
    """True when ``text`` holds no character ``escape_line`` would escape."""
    return not any(_unsafe(ch) for ch in text)


def escape_block(text: object, *, indent: str = "    ", limit: int | None = None) -> list[str]:
    """Multi-line untrusted text as marked lines: ``indent + '| ' + escaped line``.

    Only LF, CRLF and CR separate lines here; every other line or paragraph separator is
    escaped in place, so the block has exactly the lines a reader sees.
    """
    s = text if isinstance(text, str) else str(text)
    if limit is not None and len(s) > limit:
        s = s[:limit] + f"... [{len(s) - limit} more characters]"
    lines = s.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    return [f"{indent}{BLOCK_MARK}{escape_line(line.expandtabs(4))}" for line in lines]


def _no_surrogates(text: str) -> str:
    if not any(0xD800 <= ord(ch) <= 0xDFFF for ch in text):
        return text
    return "".join(escape_char(ch) if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in text)


def json_text(text: str) -> str:
    """``text`` with URL credentials redacted and lone surrogates replaced by their
    escapes, so it encodes as UTF-8.

    Other characters are left to the JSON encoder, which escapes controls itself.
    """
    return _no_surrogates(redact_secrets(text))


def _json_escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def inert_json(document: str) -> str:
    """A serialized JSON document with every remaining unsafe character (bidi controls,
    C1, line separators...) written as a ``\\uXXXX`` escape: the same values for any JSON
    parser, and nothing that reorders or breaks lines when the file is shown as text.
    (JSON's structure is ASCII, so such characters can only sit inside strings.)"""
    document = redact_secrets(document)  # the net under json_text: every string, any key
    if document.isascii() and "\x7f" not in document:  # JSON escapes C0 itself, not DEL
        return document
    # Raw LF, CR and TAB can only be the document's own whitespace (inside strings JSON
    # requires them escaped), so they stay.
    return "".join(_json_escape(ch) if ch not in "\n\r\t" and _unsafe(ch) else ch
                   for ch in document)


def inert_toml(document: str) -> str:
    """A TOML document with basic strings only (as ``tomli_w`` writes by default) with every
    unsafe character written as a ``\\uXXXX`` or ``\\UXXXXXXXX`` escape: the same values
    for any TOML parser, and nothing that reorders or breaks lines when it is shown. (TOML's
    structure is ASCII, so outside comments such characters can only sit inside strings;
    the caller escapes its comments with ``escape_line``.)"""
    if document.isascii() and "\x7f" not in document:
        return document
    return "".join((f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}")
                   if ch not in "\n\r\t" and _unsafe(ch) else ch for ch in document)


def json_clean(value: Any) -> Any:
    """``value`` (parsed JSON: dicts, lists, strings, numbers) with :func:`json_text`
    applied to every string and key."""
    if isinstance(value, str):
        return json_text(value)
    if isinstance(value, dict):
        return {json_text(k) if isinstance(k, str) else k: json_clean(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [json_clean(v) for v in value]
    return value


def raw_bytes_b64(path: str) -> str | None:
    """Base64 of the file name's bytes when ``json_text`` had to change an undecodable
    byte of it, else None (a redacted credential is never given back here)."""
    path = redact_secrets(path)
    if _no_surrogates(path) == path:
        return None
    try:
        raw = path.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that is not an escaped byte
        raw = path.encode("utf-8", "surrogatepass")
    return base64.b64encode(raw).decode("ascii")


class LogFormatter(logging.Formatter):
    """``safehub: message`` on stderr, with the output discipline applied to every record.

    String arguments are escaped to one line each (a file name or an exception text cannot
    add a line), except :class:`Block` arguments; any line after the first that does not
    start with whitespace is indented, so no record can print a line that looks like
    another record.
    """

    def __init__(self, prefix: str = "safehub: ", *, clear_line: bool = False):
        super().__init__()
        # On a terminal, a record first erases the line a progress bar or status is on.
        self.prefix = ("\r\x1b[K" if clear_line else "") + prefix

    def format(self, record: logging.LogRecord) -> str:
        args = record.args
        if isinstance(args, tuple):
            args = tuple(a if isinstance(a, (Block, int, float)) else escape_line(a)
                         for a in args)
        try:
            message = str(record.msg) % args if args else str(record.msg)
        except (TypeError, ValueError):
            message = f"{record.msg} {args!r}"
        if record.exc_info and record.levelno >= logging.ERROR:
            message += "\n" + self.formatException(record.exc_info)
        lines = message.split("\n")
        out = [self.prefix + escape_line(lines[0])]  # (the prefix is ours, not escaped)
        out.extend(escape_line(line if line[:1].isspace() else "  " + line)
                   for line in lines[1:])
        return "\n".join(out)
