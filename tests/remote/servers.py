"""Real servers on 127.0.0.1 for remote scanning tests.

:class:`RangeServer` serves files from disk (sparse ones included) with ``Range`` as
RFC 9110 defines it: one range (206 + Content-Range), several (206
``multipart/byteranges``), suffix ranges (``-N``), 416 past the end; or, with
``multi_range=False``, as servers that ignore multi-range requests do (200, whole file).
It also speaks the subset of the Hugging Face Hub API that ``huggingface_hub`` uses to
download: ``GET /api/models/{repo}/revision/{rev}`` (``sha``),
``GET /api/models/{repo}/tree/{rev}[/{path}]`` (``recursive``), ``HEAD``/``GET
/{repo}/resolve/{rev}/{path}`` (with ``X-Repo-Commit``, ``ETag``, ``X-Linked-Etag`` and
``X-Linked-Size`` for LFS files, as the Hub sends them). Every request is counted, with
the bytes of body sent.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["CountingProxy", "HfRepo", "RangeServer"]

_LFS = (".bin", ".safetensors", ".pth", ".pt", ".ckpt", ".pkl", ".sig", ".npy", ".npz")


@dataclass
class HfRepo:
    """A repo at one commit: path in repo -> file on disk."""

    commit: str
    files: dict[str, Path]
    branches: tuple[str, ...] = ("main",)
    token: str | None = None  # private: API and resolve answer 401 without this bearer token


@dataclass
class Served:
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # method, path, Range
    body_bytes: int = 0
    authorization: list[tuple[str, str]] = field(default_factory=list)  # path, header sent


class RangeServer:
    """``files``: URL path -> file on disk. ``repos``: Hugging Face repos by id."""

    def __init__(self, *, multi_range: bool = True) -> None:
        self.lfs_cdn: RangeServer | None = None  # LFS files redirect there, as the Hub does
        self.files: dict[str, Path] = {}
        self.repos: dict[str, HfRepo] = {}
        self.multi_range = multi_range
        self.served = Served()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                server._handle(self, head=True)

            def do_GET(self) -> None:
                server._handle(self, head=False)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def add(self, url_path: str, file: Path) -> str:
        self.files[url_path] = file
        return self.url + url_path

    def reset(self) -> None:
        with self._lock:
            self.served = Served()

    # --- dispatch ---------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler, *, head: bool) -> None:
        parts = urlsplit(h.path)
        path = unquote(parts.path)
        with self._lock:
            self.served.requests.append(("HEAD" if head else "GET", h.path,
                                         h.headers.get("Range", "")))
            if h.headers.get("Authorization"):
                self.served.authorization.append((h.path, h.headers["Authorization"]))
        for repo_id, repo in self.repos.items():
            if repo.token and (path.startswith(f"/api/models/{repo_id}/") or
                               path.startswith(f"/{repo_id}/resolve/")) and \
                    h.headers.get("Authorization") != f"Bearer {repo.token}":
                self._send(h, 401, b'{"error": "Invalid username or password."}', head=head,
                           ctype="application/json")
                return
        if path.startswith("/api/models/"):
            self._api(h, path[len("/api/models/"):], parse_qs(parts.query), head)
            return
        found = re.match(r"^/(.+?/.+?)/resolve/([^/]+)/(.+)$", path)
        if found and found.group(1) in self.repos:
            self._resolve(h, found.group(1), found.group(2), found.group(3), head)
            return
        file = self.files.get(path)
        if file is None:
            self._send(h, 404, b"not found", head=head)
            return
        self._file(h, file, head)

    def _api(self, h: BaseHTTPRequestHandler, rest: str, query: dict[str, list[str]],
             head: bool) -> None:
        for repo_id, repo in self.repos.items():
            if not rest.startswith(repo_id + "/"):
                continue
            tail = rest[len(repo_id) + 1:]
            kind, _, remainder = tail.partition("/")
            rev, _, sub = remainder.partition("/")
            if rev not in (repo.commit, *repo.branches):
                self._send(h, 404, b'{"error": "Revision Not Found"}', head=head)
                return
            if kind == "revision":
                siblings = [{"rfilename": p} for p in sorted(repo.files)]
                body = {"id": repo_id, "sha": repo.commit, "siblings": siblings}
                self._send(h, 200, json.dumps(body).encode(), head=head,
                           ctype="application/json")
                return
            if kind == "tree":
                recursive = query.get("recursive", ["false"])[0].lower() in ("true", "1")
                prefix = sub.strip("/")
                entries: list[dict[str, object]] = []
                dirs: set[str] = set()
                for p, file in sorted(repo.files.items()):
                    if prefix and not p.startswith(prefix + "/"):
                        continue
                    rel = p[len(prefix) + 1:] if prefix else p
                    if not recursive and "/" in rel:
                        dirs.add((prefix + "/" if prefix else "") + rel.split("/")[0])
                        continue
                    entry: dict[str, object] = {"type": "file", "path": p,
                                                "size": file.stat().st_size,
                                                "oid": _git_oid(file)}
                    if p.endswith(_LFS):
                        entry["lfs"] = {"oid": _sha256(file), "size": file.stat().st_size,
                                        "pointerSize": 134}
                    entries.append(entry)
                if recursive:
                    for p in repo.files:
                        parts = p.split("/")[:-1]
                        for i in range(1, len(parts) + 1):
                            d = "/".join(parts[:i])
                            if not prefix or d.startswith(prefix + "/"):
                                dirs.add(d)
                entries.extend({"type": "directory", "path": d, "oid": "0" * 40, "size": 0}
                               for d in sorted(dirs))
                self._send(h, 200, json.dumps(entries).encode(), head=head,
                           ctype="application/json")
                return
        self._send(h, 404, b'{"error": "Repository Not Found"}', head=head)

    def _resolve(self, h: BaseHTTPRequestHandler, repo_id: str, rev: str, path: str,
                 head: bool) -> None:
        repo = self.repos[repo_id]
        file = repo.files.get(path)
        if rev not in (repo.commit, *repo.branches) or file is None:
            self._send(h, 404, b"Entry not found", head=head,
                       extra={"X-Error-Code": "EntryNotFound"})
            return
        extra = {"X-Repo-Commit": repo.commit}
        if path.endswith(_LFS):
            digest = _sha256(file)
            extra.update({"ETag": f'"{digest}"', "X-Linked-Etag": f'"{digest}"',
                          "X-Linked-Size": str(file.stat().st_size)})
            if self.lfs_cdn is not None:
                location = self.lfs_cdn.add(f"/cdn/{digest}", file)
                self._send(h, 302, b"", head=head, extra={**extra, "Location": location})
                return
        else:
            extra["ETag"] = f'"{_git_oid(file)}"'
        self._file(h, file, head, extra=extra)

    # --- bytes ------------------------------------------------------------------------------

    def _file(self, h: BaseHTTPRequestHandler, file: Path, head: bool,
              extra: dict[str, str] | None = None) -> None:
        size = file.stat().st_size
        header = h.headers.get("Range")
        extra = dict(extra or {})
        extra["Accept-Ranges"] = "bytes"
        ranges = _parse_ranges(header, size) if header else None
        if ranges is None or (len(ranges) > 1 and not self.multi_range):
            self._stream(h, 200, file, [(0, size)], head, extra, size)
            return
        if not ranges:
            self._send(h, 416, b"", head=head, extra={"Content-Range": f"bytes */{size}"})
            return
        if len(ranges) == 1:
            start, end = ranges[0]
            extra["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
            self._stream(h, 206, file, ranges, head, extra, end - start)
            return
        boundary = "SAFEHUBTESTBOUNDARY"
        chunks: list[bytes] = []
        with open(file, "rb") as fh:
            for start, end in ranges:
                fh.seek(start)
                chunks.append(f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n"
                              f"Content-Range: bytes {start}-{end - 1}/{size}\r\n\r\n"
                              .encode() + fh.read(end - start))
        chunks.append(f"\r\n--{boundary}--\r\n".encode())
        self._send(h, 206, b"".join(chunks), head=head, extra=extra,
                   ctype=f"multipart/byteranges; boundary={boundary}")

    def _stream(self, h: BaseHTTPRequestHandler, status: int, file: Path,
                ranges: list[tuple[int, int]], head: bool, extra: dict[str, str],
                length: int) -> None:
        h.send_response(status)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(length))
        for k, v in extra.items():
            h.send_header(k, v)
        h.end_headers()
        if head:
            return
        start, _ = ranges[0]
        sent = 0
        try:
            with open(file, "rb") as fh:
                fh.seek(start)
                while sent < length:
                    chunk = fh.read(min(1 << 16, length - sent))
                    if not chunk:
                        break
                    h.wfile.write(chunk)
                    sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True
        finally:
            with self._lock:
                self.served.body_bytes += sent

    def _send(self, h: BaseHTTPRequestHandler, status: int, body: bytes, *, head: bool,
              ctype: str = "text/plain", extra: dict[str, str] | None = None) -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            h.send_header(k, v)
        h.end_headers()
        if not head:
            try:
                h.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                h.close_connection = True
            with self._lock:
                self.served.body_bytes += len(body)


class CountingProxy:
    """A reverse proxy on 127.0.0.1 in front of ``upstream`` (moto's S3 server): every
    request is forwarded as it came and counted here, server-side, with the body bytes
    of every answer (S3 clients sign the path and headers, not the host they connect to,
    and moto does not check signatures)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.served = Served()
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                proxy._forward(self, "GET")

            def do_HEAD(self) -> None:
                proxy._forward(self, "HEAD")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def reset(self) -> None:
        with self._lock:
            self.served = Served()

    def _forward(self, h: BaseHTTPRequestHandler, method: str) -> None:
        with self._lock:
            self.served.requests.append((method, h.path, h.headers.get("Range", "")))
        conn = http.client.HTTPConnection(self.upstream.hostname or "", self.upstream.port,
                                          timeout=60)
        try:
            headers = {k: v for k, v in h.headers.items() if k.lower() != "connection"}
            conn.request(method, h.path, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        h.send_response(resp.status)
        for key, value in resp.getheaders():
            if key.lower() not in ("connection", "transfer-encoding", "content-length",
                                   "server", "date"):
                h.send_header(key, value)
        length = resp.getheader("Content-Length") if method == "HEAD" else None
        h.send_header("Content-Length", length or str(len(body)))
        h.end_headers()
        if method != "HEAD":
            h.wfile.write(body)
            with self._lock:
                self.served.body_bytes += len(body)


def _parse_ranges(header: str, size: int) -> list[tuple[int, int]] | None:
    """``[start, end)`` ranges of a ``Range`` header; None when it is not a byte range
    (serve the whole file), [] when none is satisfiable."""
    if not header.startswith("bytes="):
        return None
    out: list[tuple[int, int]] = []
    for spec in header[6:].split(","):
        spec = spec.strip()
        first, sep, last = spec.partition("-")
        if not sep:
            return None
        if not first:
            if not last.isdigit():
                return None
            n = int(last)
            if n > 0 and size > 0:
                out.append((max(0, size - n), size))
            continue
        if not first.isdigit() or (last and not last.isdigit()):
            return None
        start = int(first)
        end = min(size, int(last) + 1) if last else size
        if start < size and end > start:
            out.append((start, end))
    return out


_DIGESTS: dict[tuple[str, int, float], str] = {}


def _sha256(file: Path) -> str:
    st = file.stat()
    key = ("sha256:" + str(file), st.st_size, st.st_mtime)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(file, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def _git_oid(file: Path) -> str:
    st = file.stat()
    key = ("git:" + str(file), st.st_size, st.st_mtime)
    if key not in _DIGESTS:
        if st.st_size > (64 << 20):
            _DIGESTS[key] = "0" * 40  # not hashed: a large sparse test file
        else:
            data = file.read_bytes()
            _DIGESTS[key] = hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()
    return _DIGESTS[key]
