"""Downloads that sandboxed code asks for, decided and performed by the parent.

Inside the child, ``torch.hub.load_state_dict_from_url`` (and its alias
``torch.utils.model_zoo.load_url``), ``torch.hub.download_url_to_file`` and
``torch.hub.load`` of a GitHub repo are replaced by stubs that ask the parent over
the channel. The parent hands the request to the caller's :class:`Broker` (which
applies the policy, downloads, verifies and scans), opens the approved file
read-only and passes the descriptor; the child then loads it with
``torch.load(weights_only=True)``. An approved repo is copied into a folder the
child may only read, and loaded from there, still inside the sandbox.

An http(s) URL a child sends is put in canonical form (:mod:`safehub._policy.urls`)
before anything else: the broker decides on, fetches and records that one
string; a malformed URL (encoded ``/``, ``%2e%2e``, userinfo, control
characters, ...) is refused without a request.

A refusal becomes a :class:`DownloadRefused` in the child (repo code may catch
it); when the call then fails, the parent raises the broker's own exception, not
the child's account of it.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import time
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from safehub._policy.urls import canonical_url
from safehub._sandbox.channel import Channel
from safehub._sandbox.errors import LimitExceeded, clean_text
from safehub._tree import copy_tree, tree_size
from safehub.errors import FetchError, InternalError, PolicyViolation, SafehubError

__all__ = ["Broker", "BrokerService", "DownloadRefused", "Requester", "install_stubs"]

_MAX_URL = 8192
# A first filter only (full match: no trailing newline); the fetch layer validates the name.
_REPO = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}/[A-Za-z0-9_.-]{1,100}(:[^\x00-\x20]{1,255})?")


@runtime_checkable
class Broker(Protocol):
    """What the parent asks when sandboxed code wants something from the network.

    Implementations apply the policy and may raise ``PolicyViolation``,
    ``UnsafeModel``, ``IntegrityError`` or ``FetchError``; whatever they return is
    handed to the child read-only.
    """

    def fetch(self, url: str, *, file_name: str | None, check_hash: bool) -> Path | int:
        """Download (or find in the cache) the file at ``url``; return its local path (or
        a read-only descriptor, which the broker service takes over).

        ``file_name`` and ``check_hash`` have torch.hub's meaning: the cache name,
        and whether the name's hash prefix must match the content.
        """
        ...

    def fetch_repo(self, repo: str, *, force_reload: bool) -> Path:
        """Resolve ``owner/name[:ref]`` to a local folder holding the repo's files."""
        ...


class DownloadRefused(RuntimeError):
    """Raised inside the sandbox when the parent refuses or fails a download."""

    def __init__(self, message: str, request_id: int):
        super().__init__(message)
        self.request_id = request_id


# --- parent side ---------------------------------------------------------------------------


class BrokerService:
    """Serves one child's download requests with the caller's broker (or refuses all)."""

    def __init__(self, broker: Broker | None, grants_dir: Path, *, max_requests: int = 256,
                 max_copy_mb: int | None = None):
        self.broker = broker
        self.grants_dir = grants_dir
        self.max_requests = max_requests
        # Repositories are copied for the child by this (unconfined) process: the copies
        # count against the sandbox's file limit, and each source is copied once.
        self.max_copy_mb = max_copy_mb
        self.copied = 0
        self.copies: dict[str, Path] = {}
        self.requests = 0
        self.elapsed = 0.0
        self.failures: dict[int, SafehubError] = {}
        self.fetched: list[str] = []

    def handle(self, message: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        """The reply to a ``fetch`` or ``hub_load`` frame, and descriptors to pass with it."""
        rid = message.get("id")
        if not isinstance(rid, int) or isinstance(rid, bool):
            raise ValueError("request without an integer id")
        self.requests += 1
        started = time.monotonic()
        try:
            if self.requests > self.max_requests:
                raise PolicyViolation(f"more than {self.max_requests} download requests in one "
                                      "call", fix="do not use this repository")
            if self.broker is None:
                raise PolicyViolation(
                    "downloads are not available to this sandboxed call (no broker)",
                    subject=clean_text(message.get("url") or message.get("repo"), 300),
                    fix="load through safehub.load, which brokers downloads by policy")
            if message["t"] == "fetch":
                reply, fds = self._fetch(message)
            else:
                reply, fds = self._repo(message)
        except SafehubError as exc:
            self.failures[rid] = exc
            return {"t": "reply", "id": rid, "ok": False, "type": type(exc).__name__,
                    "message": exc.message}, []
        finally:
            self.elapsed += time.monotonic() - started
        reply.update(t="reply", id=rid, ok=True)
        return reply, fds

    def _fetch(self, message: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        url, file_name, check_hash = (message.get("url"), message.get("file_name"),
                                      message.get("check_hash"))
        if not isinstance(url, str) or not url or len(url) > _MAX_URL:
            raise PolicyViolation("malformed download request (url)", fix="do not use this repo")
        if url.partition(":")[0].lower() in ("http", "https"):
            # InvalidIdentifier (refused) for a malformed one. Other schemes go to the broker
            # as sent: safehub's own brokers serve one internal URL (conversion) or refuse
            # them (the fetch layer takes http and https only).
            url = canonical_url(url)
        if file_name is not None and (not isinstance(file_name, str) or not file_name
                                      or "/" in file_name or "\x00" in file_name
                                      or file_name in (".", "..") or len(file_name) > 255):
            raise PolicyViolation("malformed download request (file_name)",
                                  subject=clean_text(url, 300), fix="do not use this repo")
        if not isinstance(check_hash, bool):
            raise PolicyViolation("malformed download request (check_hash)",
                                  subject=clean_text(url, 300), fix="do not use this repo")
        if self.broker is None:
            raise InternalError("download request without a broker")
        path = self.broker.fetch(url, file_name=file_name, check_hash=check_hash)
        try:
            # A broker may hand over a descriptor it owns (a private snapshot), not a path.
            fd = path if isinstance(path, int) else os.open(
                path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError as exc:
            raise FetchError(f"the approved file cannot be opened: {exc}", subject=str(path),
                             fix="check the download cache") from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise FetchError("the approved download is not a regular file", subject=str(path))
        self.fetched.append(url)
        return {}, [fd]

    def _repo(self, message: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        repo, force_reload = message.get("repo"), message.get("force_reload")
        if not isinstance(repo, str) or not _REPO.fullmatch(repo):
            raise PolicyViolation("malformed repo request", subject=clean_text(repo, 300),
                                  fix="use owner/name[:ref]")
        if self.broker is None:
            raise InternalError("repository request without a broker")
        source = self.broker.fetch_repo(repo, force_reload=bool(force_reload))
        if not source.is_dir():
            raise FetchError("the approved repo is not a folder", subject=str(source))
        key = os.path.realpath(source)
        target = self.copies.get(key)
        if target is None:
            size = _tree_size(source)
            if self.max_copy_mb is not None and self.copied + size > self.max_copy_mb << 20:
                raise LimitExceeded(
                    f"the repositories the code loads would take more than the sandbox's "
                    f"{self.max_copy_mb} MiB file limit ({self.copied + size} bytes)",
                    limit="file size", value=self.max_copy_mb, subject=clean_text(repo, 300),
                    fix="if the model legitimately needs them, raise policy [sandbox] "
                        f"max_file_mb (now {self.max_copy_mb})")
            # A folder the child can only read (Landlock: read-only; made by the parent).
            target = self.grants_dir / (f"{len(self.copies)}-"
                                        f"{re.sub(r'[^A-Za-z0-9_.-]', '_', repo)}")
            copy_tree(source, target, copy_function=shutil.copyfile,
                      ignore=shutil.ignore_patterns(".git"))
            self.copied += size
            self.copies[key] = target
        self.fetched.append(repo)
        return {"dir": str(target)}, []


def _tree_size(root: Path) -> int:
    """Bytes of the regular files under ``root`` that a copy takes (``.git`` left out)."""
    return tree_size(root, leave_out=frozenset({".git"}), everywhere=True)


# --- child side -----------------------------------------------------------------------------


class Requester:
    """The child's side of the broker: asks the parent on the current call's channel."""

    def __init__(self, channel: Channel):
        self.channel = channel
        self.next_id = 0

    def use(self, channel: Channel) -> None:
        """Ask on ``channel`` from now on (a warm child's call: the stubs repository code
        imported earlier, ``from torch.hub import load_state_dict_from_url``, stay bound to
        this requester, which then asks the call's own supervisor)."""
        self.channel = channel
        self.next_id = 0

    def ask(self, kind: str, **fields: Any) -> tuple[dict[str, Any], list[int]]:
        self.next_id += 1
        rid = self.next_id
        self.channel.send({"t": kind, "id": rid, **fields})
        reply, fds = self.channel.recv()
        if reply.get("t") != "reply" or reply.get("id") != rid:
            for fd in fds:
                os.close(fd)
            raise DownloadRefused("unexpected reply from the sandbox supervisor", rid)
        if not reply.get("ok"):
            for fd in fds:
                os.close(fd)
            raise DownloadRefused(f"{reply.get('type')}: {reply.get('message')}", rid)
        return reply, fds


def install_stubs(channel: Channel) -> Requester:
    """Replace torch.hub's download entry points in this (child) process; returns the
    requester they ask through."""
    import hashlib

    import torch
    import torch.hub
    import torch.utils.model_zoo

    requester = Requester(channel)
    original_load: Any = torch.hub.load

    def _fetch_fd(url: str, file_name: str | None, check_hash: bool) -> int:
        _, fds = requester.ask("fetch", url=str(url), file_name=file_name,
                               check_hash=bool(check_hash))
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise DownloadRefused("the supervisor sent no file", requester.next_id)
        return fds[0]

    def load_state_dict_from_url(url: str, model_dir: str | None = None,
                                 map_location: Any = None, progress: bool = True,
                                 check_hash: bool = False, file_name: str | None = None,
                                 weights_only: bool = False) -> Any:
        """torch.hub.load_state_dict_from_url, brokered: always ``weights_only=True``."""
        fd = _fetch_fd(url, file_name, check_hash)
        with os.fdopen(fd, "rb") as fh:
            return torch.load(fh, map_location=map_location, weights_only=True)

    def download_url_to_file(url: str, dst: str, hash_prefix: str | None = None,
                             progress: bool = True) -> None:
        """torch.hub.download_url_to_file, brokered."""
        fd = _fetch_fd(url, None, False)
        digest = hashlib.sha256()
        with os.fdopen(fd, "rb") as src, open(dst, "wb") as out:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if hash_prefix is not None and not digest.hexdigest().startswith(hash_prefix):
            os.unlink(dst)
            raise RuntimeError(f'invalid hash value (expected "{hash_prefix}", got '
                               f'"{digest.hexdigest()}")')

    def load(repo_or_dir: str, model: str, *args: Any, source: str = "github",
             trust_repo: Any = None, force_reload: bool = False, verbose: bool = True,
             skip_validation: bool = False, **kwargs: Any) -> Any:
        """torch.hub.load, brokered for GitHub repos; runs inside this sandbox."""
        if source == "local":
            return original_load(repo_or_dir, model, *args, source="local", **kwargs)
        reply, _ = requester.ask("hub_load", repo=str(repo_or_dir),
                                 force_reload=bool(force_reload))
        return original_load(reply["dir"], model, *args, source="local", **kwargs)

    patches: dict[Any, dict[str, Any]] = {
        torch.hub: {"load_state_dict_from_url": load_state_dict_from_url,
                    "download_url_to_file": download_url_to_file, "load": load},
        torch.utils.model_zoo: {"load_url": load_state_dict_from_url},
    }
    for module, names in patches.items():
        for name, stub in names.items():
            setattr(module, name, stub)
    return requester
