"""A loopback HTTP server that normalises request paths the way CDNs and app servers do.

Before looking a path up it decodes percent-escapes (twice, as some servers do),
reads ``\\`` as ``/``, drops ``;params`` from segments (Tomcat), reads a segment
of dots as ``..`` (Windows trims trailing dots and spaces), merges repeated
slashes and resolves ``.``/``..``. Files it knows are served; redirects are
answered; any other path is answered ``404`` with the path it resolved to in
``X-Resolved`` (so tests can ask what the server made of a URL). Every request's
raw target and resolution is logged.

With ``folding=True`` it is more lenient still, as some servers are: it decodes until
nothing changes (any number of times), folds overlong UTF-8 (``%C0%AE`` is '.') and
applies Unicode NFKC (fullwidth U+FF0E is '.').
"""

from __future__ import annotations

import re
import threading
import unicodedata
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, unquote_to_bytes

__all__ = ["NormalisingServer", "server_view"]


def _fold(path: str) -> str:
    """Decode until stable, folding overlong UTF-8 and NFKC on every round."""
    for _ in range(8):
        raw = unquote_to_bytes(path)
        raw = re.sub(rb"[\xc0\xc1][\x80-\xbf]",
                     lambda m: bytes([((m[0][0] & 0x1F) << 6) | (m[0][1] & 0x3F)]), raw)
        text = unicodedata.normalize("NFKC", raw.decode("utf-8", "replace"))
        if text == path:
            break
        path = text
    return path


def server_view(target: str, folding: bool = False) -> str:
    """The path such a server serves for a raw request target."""
    path = target.split("?", 1)[0].split("#", 1)[0]
    path = (_fold(path) if folding else unquote(unquote(path))).replace("\\", "/")
    out: list[str] = []
    for segment in path.split("/"):
        segment = segment.split(";", 1)[0].rstrip(" ")
        if segment and not segment.strip("."):
            segment = "." if segment == "." else ".."
        if segment in ("", "."):
            continue
        if segment == "..":
            if out:
                out.pop()
            continue
        out.append(segment)
    return "/" + "/".join(out)


class NormalisingServer:
    """The server on 127.0.0.1; ``url`` is its base."""

    def __init__(self, folding: bool = False) -> None:
        self.files: dict[str, bytes] = {}
        self.redirects: dict[str, str] = {}
        self.log: list[tuple[str, str]] = []  # (raw target, resolved path)
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                resolved = server_view(self.path, folding)
                with owner.lock:
                    owner.log.append((self.path, resolved))
                if resolved in owner.redirects:
                    self.send_response(302)
                    self.send_header("Location", owner.redirects[resolved])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = owner.files.get(resolved)
                self.send_response(200 if body is not None else 404)
                # Header values are latin-1 on the wire: send the UTF-8 bytes of what the
                # path decoded to (readers undo it with .encode("latin-1").decode()).
                self.send_header("X-Resolved", resolved.encode("utf-8", "surrogatepass")
                                 .decode("latin-1"))
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,),
                                       daemon=True)
        self.thread.start()

    def served(self, path: str) -> bool:
        """Whether any request resolved to ``path``."""
        with self.lock:
            return any(resolved == path for _, resolved in self.log)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
