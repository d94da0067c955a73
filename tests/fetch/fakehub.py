"""A real HTTP server on 127.0.0.x that speaks the part of GitHub safehub uses.

It serves, under ``/api``, ``GET /repos/{o}/{r}`` (default_branch),
``GET /repos/{o}/{r}/commits/{ref}`` (sha) and ``GET /repos/{o}/{r}/zipball/{ref}``
(a 302 to ``/codeload/...`` on this or another server, as GitHub does), plus any
file registered with :meth:`FakeHub.add_file`, with faults on demand (error
statuses, truncation, slowness, redirects, rate limits, Range support). Every
request is logged with its headers so tests can count them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import ssl
import tarfile
import threading
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

__all__ = ["FakeHub", "Fault", "Logged", "make_tar", "make_zip", "self_signed_cert"]


@dataclass
class Fault:
    """How a path misbehaves. Lists are consumed one request at a time."""

    statuses: list[int] = field(default_factory=list)  # answer these first (e.g. [503, 503])
    always_status: int | None = None
    truncate: int = 0  # this many responses send half the body, then close
    ranges: bool = False  # honour Range (with ETag and Accept-Ranges)
    delay: float = 0.0  # before the status line
    chunk_delay: float = 0.0  # between 64 KiB chunks of the body
    no_length: bool = False  # no Content-Length (body ends when the connection closes)
    redirect: str | None = None  # 302 to this URL
    rate_limit_reset: int | None = None  # 403 with X-RateLimit-Remaining: 0
    require_token: str | None = None  # 404 without "Authorization: Bearer <token>"


@dataclass
class Logged:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class _Repo:
    default_branch: str = "main"
    refs: dict[str, str] = field(default_factory=dict)  # branch/tag/short sha -> sha
    archives: dict[str, bytes] = field(default_factory=dict)  # sha -> archive bytes
    branches: dict[str, list[str]] = field(default_factory=dict)  # name -> commits, oldest first
    tags: dict[str, str] = field(default_factory=dict)  # name -> sha

    def history(self, base: str) -> list[str] | None:
        """The commits ``base`` (a branch, tag or commit of a branch) reaches, oldest first."""
        if base in self.branches:
            return self.branches[base]
        sha = self.tags.get(base, base)
        for commits in self.branches.values():
            if sha in commits:
                return commits[:commits.index(sha) + 1]
        return None


def make_zip(top: str, files: dict[str, bytes], *, comment: bytes = b"",
             raw: Sequence[tuple[zipfile.ZipInfo, bytes]] = ()) -> bytes:
    """A GitHub-style zipball: every file under ``top/``; ``raw`` adds crafted members."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{top}/", b"")
        for name, data in files.items():
            zf.writestr(f"{top}/{name}", data)
        for info, data in raw:
            zf.writestr(info, data)
        zf.comment = comment
    return buf.getvalue()


def make_tar(top: str, files: dict[str, bytes], *, comment: str = "", compression: str = "gz",
             raw: Sequence[tuple[tarfile.TarInfo, bytes | None]] = ()) -> bytes:
    """A GitHub-style tarball (pax, the commit in a global ``comment``)."""
    buf = io.BytesIO()
    headers = {"comment": comment} if comment else {}
    with tarfile.open(fileobj=buf, mode=f"w:{compression}" if compression else "w",
                      format=tarfile.PAX_FORMAT, pax_headers=headers) as tf:
        d = tarfile.TarInfo(top)
        d.type = tarfile.DIRTYPE
        d.mode = 0o755
        tf.addfile(d)
        for name, data in files.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info, data in raw:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def fake_sha(*parts: object) -> str:
    return hashlib.sha1(repr(parts).encode()).hexdigest()


class FakeHub:
    """The server. ``url`` is its base; ``api`` the GitHub API base under it."""

    def __init__(self, host: str = "127.0.0.1", *, tls: tuple[Path, Path] | None = None):
        self.repos: dict[str, _Repo] = {}
        self.files: dict[str, bytes] = {}
        self.faults: dict[str, Fault] = {}
        self.log: list[Logged] = []
        self.sent: dict[str, int] = {}  # path -> body bytes sent so far
        self.api_token: str | None = None  # the API answers 404 without it (private repos)
        self.archive_base: str | None = None  # codeload on another server
        self.moved: dict[str, str] = {}  # "owner/name" (any case) -> the full_name answered
        self.lock = threading.Lock()
        hub = self

        class Handler(_Handler):
            owner = hub

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        scheme = "http"
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.host = host
        self.port = self.server.server_address[1]
        self.url = f"{scheme}://{host}:{self.port}"
        self.api = f"{self.url}/api"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- content -------------------------------------------------------------------------

    def add_repo(self, repo: str, files: dict[str, bytes] | None = None, *, ref: str = "main",
                 tags: tuple[str, ...] = (), default_branch: str | None = None,
                 archive: bytes | None = None, kind: str = "zip", comment: bool = True) -> str:
        """Add a commit to ``repo`` at branch ``ref`` (and tags); returns its SHA."""
        files = files if files is not None else {"hubconf.py": b"dependencies = []\n"}
        sha = fake_sha(repo, sorted(files.items()), ref, len(self.repos))
        entry = self.repos.setdefault(repo, _Repo())
        if default_branch:
            entry.default_branch = default_branch
        top = f"{repo.replace('/', '-')}-{sha[:7]}"
        if archive is None:
            archive = (make_zip(top, files, comment=sha.encode() if comment else b"")
                       if kind == "zip" else make_tar(top, files, comment=sha if comment else ""))
        entry.refs[ref] = sha
        entry.branches.setdefault(ref, []).append(sha)
        for tag in tags:
            entry.refs[tag] = sha
            entry.tags[tag] = sha
        entry.refs[sha[:7]] = sha
        entry.archives[sha] = archive
        return sha

    def add_fork_commit(self, repo: str, files: dict[str, bytes], *,
                        pull: int | None = None) -> str:
        """A commit pushed to a fork of ``repo``: as on GitHub, the parent's URLs serve it
        (``commits/SHA``, a short SHA, the archive; ``refs/pull/N/head`` when it is the head
        of pull request ``pull``), but none of the parent's branches or tags reaches it."""
        entry = self.repos[repo]
        sha = fake_sha("fork", repo, sorted(files.items()))
        top = f"{repo.replace('/', '-')}-{sha[:7]}"
        entry.archives[sha] = make_zip(top, files, comment=sha.encode())
        entry.refs[sha[:7]] = sha
        if pull is not None:
            entry.refs[f"refs/pull/{pull}/head"] = sha
            entry.refs[f"pull/{pull}/head"] = sha
        return sha

    def add_file(self, path: str, data: bytes, fault: Fault | None = None) -> str:
        """Serve ``data`` at ``path``; returns its URL."""
        self.files[path] = data
        if fault is not None:
            self.faults[path] = fault
        return self.url + path

    # --- the log -------------------------------------------------------------------------

    def requests_to(self, prefix: str = "/") -> list[Logged]:
        with self.lock:
            return [r for r in self.log if r.path.startswith(prefix)]

    def count(self, prefix: str = "/") -> int:
        return len(self.requests_to(prefix))


class _Handler(BaseHTTPRequestHandler):
    owner: FakeHub
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def handle(self) -> None:
        with contextlib.suppress(OSError):  # the client hung up (timeouts, kills)
            super().handle()

    def do_GET(self) -> None:
        hub = self.owner
        path = self.path.split("?", 1)[0]
        with hub.lock:
            hub.log.append(Logged("GET", path, {k.lower(): v for k, v in self.headers.items()}))
        fault = hub.faults.get(path)
        if fault is not None and self._fault(fault):
            return
        if path.startswith("/api/"):
            self._api(path[len("/api"):])
        elif path.startswith("/codeload/"):
            self._codeload(path)
        elif path in hub.files:
            self._body(hub.files[path], fault, path)
        else:
            self._json(404, {"message": "Not Found"})

    # --- faults --------------------------------------------------------------------------

    def _fault(self, fault: Fault) -> bool:
        """Apply the fault; True when it answered the request."""
        if fault.delay:
            time.sleep(fault.delay)
        if fault.rate_limit_reset is not None:
            self._json(403, {"message": "API rate limit exceeded"}, {
                "X-RateLimit-Limit": "60", "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": str(fault.rate_limit_reset)})
            return True
        if fault.require_token is not None and \
                self.headers.get("Authorization") != f"Bearer {fault.require_token}":
            self._json(404, {"message": "Not Found"})
            return True
        with self.owner.lock:
            status = fault.statuses.pop(0) if fault.statuses else fault.always_status
        if status is not None:
            self._json(status, {"message": f"fault {status}"})
            return True
        if fault.redirect is not None:
            self.send_response(302)
            self.send_header("Location", fault.redirect)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return True
        return False

    # --- the API -------------------------------------------------------------------------

    def _api(self, path: str) -> None:
        hub = self.owner
        if hub.api_token is not None and \
                self.headers.get("Authorization") != f"Bearer {hub.api_token}":
            self._json(404, {"message": "Not Found"})
            return
        m = re.match(r"^/repos/([^/]+)/([^/]+)(?:/(commits|zipball|tarball|compare)/(.+)"
                     r"|/(branches|tags))?$", path)
        # As GitHub: owner/name is found case-insensitively and answered with its full_name.
        asked = f"{m.group(1)}/{m.group(2)}" if m else ""
        full_name = next((k for k in hub.repos if k.lower() == asked.lower()), None)
        full_name = next((v for k, v in hub.moved.items() if k.lower() == asked.lower()),
                         full_name)
        repo = hub.repos.get(full_name) if full_name else None
        if m is None or repo is None or full_name is None:
            self._json(404, {"message": "Not Found"})
            return
        what, ref = m.group(3), m.group(4)
        if m.group(5) == "branches":
            self._json(200, [{"name": name, "commit": {"sha": commits[-1]}}
                             for name, commits in sorted(repo.branches.items())])
            return
        if m.group(5) == "tags":
            self._json(200, [{"name": name, "commit": {"sha": sha}}
                             for name, sha in sorted(repo.tags.items())])
            return
        if what == "compare":  # BASE...HEAD: where HEAD stands relative to BASE
            base, _, head = ref.partition("...")
            history = repo.history(base)
            if history is None or head not in repo.archives:
                self._json(404, {"message": "Not Found"})
                return
            status = ("identical" if head == history[-1] else
                      "behind" if head in history else "diverged")
            self._json(200, {"status": status, "commits": []})
            return
        if what is None:
            self._json(200, {"full_name": full_name, "default_branch": repo.default_branch})
            return
        sha = repo.refs.get(ref) or (ref if ref in repo.archives else None)
        if sha is None:
            self._json(422 if what == "commits" else 404,
                       {"message": f"No commit found for SHA: {ref}"})
            return
        if what == "commits":
            self._json(200, {"sha": sha, "commit": {"message": "fixture"}})
            return
        base = hub.archive_base or hub.url
        self.send_response(302)
        self.send_header("Location", f"{base}/codeload/{full_name}/legacy.zip/{sha}")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _codeload(self, path: str) -> None:
        m = re.match(r"^/codeload/([^/]+)/([^/]+)/legacy\.zip/([0-9a-f]{40})$", path)
        hub = self.owner
        repo = hub.repos.get(f"{m.group(1)}/{m.group(2)}") if m else None
        data = repo.archives.get(m.group(3)) if (m and repo) else None
        if data is None:
            self._json(404, {"message": "Not Found"})
            return
        self._body(data, hub.faults.get(path), path)

    # --- bodies --------------------------------------------------------------------------

    def _json(self, status: int, data: object, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _body(self, data: bytes, fault: Fault | None, path: str) -> None:
        fault = fault or Fault()
        start = 0
        rng = self.headers.get("Range")
        etag = f'"{hashlib.sha256(data).hexdigest()[:16]}"'
        status = 200
        if fault.ranges and rng and self.headers.get("If-Range") in (None, etag):
            m = re.match(r"bytes=(\d+)-$", rng)
            if m and int(m.group(1)) < len(data):
                start = int(m.group(1))
                status = 206
        body = data[start:]
        with self.owner.lock:
            truncate = fault.truncate > 0
            if truncate:
                fault.truncate -= 1
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        if not fault.no_length:
            self.send_header("Content-Length", str(len(body)))
        if fault.ranges:
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", etag)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if truncate:
            body = body[: len(body) // 2]
        step = 64 << 10
        for i in range(0, len(body), step):
            self.wfile.write(body[i:i + step])
            self.wfile.flush()
            with self.owner.lock:
                self.owner.sent[path] = self.owner.sent.get(path, 0) + len(body[i:i + step])
            if fault.chunk_delay:
                time.sleep(fault.chunk_delay)


def self_signed_cert(folder: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A throwaway certificate and key for ``host`` (an IP address)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path
