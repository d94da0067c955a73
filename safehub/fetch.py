"""Fetch: get exactly the pinned bytes, safely, once.

>>> from safehub.fetch import Fetcher
>>> fetcher = Fetcher("default")
>>> checkout = fetcher.fetch_repo("pytorch/vision:v0.20.0")
>>> checkout.commit, checkout.path
>>> with fetcher.open_url("https://download.pytorch.org/models/resnet18-f37072fd.pth",
...                       check_hash=True) as opened:
...     state = torch.load(opened.file, weights_only=True)

Every request is decided by the policy first (:class:`~safehub.policy.RepoRequest`,
:class:`~safehub.policy.DownloadRequest`); every redirect hop is checked again.
Repos resolve ``owner/repo[:ref]`` to a full commit (lockfile first, then the
GitHub-compatible API named by ``downloads.github_api``; a full SHA needs no API
call), and are cached by commit as verified, read-only checkouts; model files in
a checkout (recognised by content) are scanned and must be allowed by the policy. Files are cached
by URL, verified against the policy pin, the lockfile or torch's file-name hash
prefix and against their own record on every use, scanned, and the scan is
decided by the policy (:class:`~safehub.policy.FileRequest`) before anything is
returned. :meth:`Fetcher.open_url` hands back the open descriptor that was
hashed and scanned, so that exactly those bytes are loaded.

Errors: :class:`~safehub.errors.PolicyViolation` (denied, or not in a frozen
lockfile), :class:`~safehub.errors.IntegrityError` (digest or pin mismatch, a
tampered cache entry), :class:`~safehub.errors.FetchError` (network, HTTP,
size, unsafe archive, missing while offline). Nothing partial is ever left in the
cache, and a failed refresh never touches the previous good copy.

Signature requirements (``Decision.requirement("signature")``) are exposed on
the results (``decision``) and verified by the hub layer.
"""

from __future__ import annotations

from safehub._fetch.archive import ArchiveLimits
from safehub._fetch.fetcher import CachedFile, Fetcher, OpenedFile, RepoCheckout
from safehub._fetch.github import RepoSpec
from safehub._fetch.http import HttpSettings, Progress, ProgressCallback
from safehub._fetch.lockfile import (
    LOCKFILE_NAME,
    LockedFile,
    LockedPath,
    LockedRepo,
    Lockfile,
)

__all__ = [
    "LOCKFILE_NAME",
    "ArchiveLimits",
    "CachedFile",
    "Fetcher",
    "HttpSettings",
    "LockedFile",
    "LockedPath",
    "LockedRepo",
    "Lockfile",
    "OpenedFile",
    "Progress",
    "ProgressCallback",
    "RepoCheckout",
    "RepoSpec",
]
