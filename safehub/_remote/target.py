"""What a remote URL names, and the URL the policy decides on.

- ``https://host/path``: one file (``http://`` only to loopback, where the policy allows it).
- ``hf://owner/name[@rev][/path]``: a Hugging Face model repo (every file, or one path),
  at ``rev`` (default ``main``), read from ``$HF_ENDPOINT`` (default
  ``https://huggingface.co``) as ``huggingface_hub`` reads it: ``/{repo}/resolve/{rev}/{path}``.
- ``s3://bucket/prefix``: one object, or every object under the prefix, from
  ``$AWS_ENDPOINT_URL_S3`` / ``$AWS_ENDPOINT_URL`` (default ``https://s3.amazonaws.com``).

Every request's URL is decided by the policy's ``downloads`` rules (``allowed_urls``,
``allow_http_loopback``), as the HTTP URL that is actually requested: an S3 object as its
path-style URL on the endpoint, a Hugging Face file as its ``resolve`` URL, every
redirect hop as its own URL. :func:`canonical_url` is the one place a URL is normalised
before it is decided on and requested.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote

from safehub._policy.urls import canonical_url as _policy_canonical_url
from safehub.errors import FetchError, PolicyViolation

if TYPE_CHECKING:  # the policy (pydantic) stays off `safehub scan PATH`'s start-up
    from safehub._policy.policy import Policy

__all__ = ["RemoteRef", "canonical_url", "decide_url", "hf_endpoint", "hf_resolve_url",
           "is_remote", "parse", "s3_endpoint", "s3_object_url"]

_SCHEMES = ("https://", "http://", "hf://", "s3://")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def is_remote(spec: str) -> bool:
    """Whether a command-line argument names a remote location."""
    return spec.lower().startswith(_SCHEMES)


@dataclass(frozen=True)
class RemoteRef:
    """A parsed remote location. ``kind`` is ``http``, ``hf`` or ``s3``."""

    kind: str
    spec: str  # as given
    url: str = ""  # http: the canonical URL
    repo: str = ""  # hf: owner/name
    revision: str = "main"  # hf
    path: str = ""  # hf: path in the repo; s3: key or prefix
    bucket: str = ""  # s3


def canonical_url(url: str) -> str:
    """``url`` in the one canonical form the policy engine and the fetch layer use
    (RFC 3986 normalisation; userinfo, encoded slashes and surviving dot segments refused).

    The canonical URL is what the policy decides on and what is requested.
    """
    return _policy_canonical_url(url)


def decide_url(policy: Policy, url: str) -> str:
    """The canonical ``url`` if the policy allows requesting it; raises
    :class:`~safehub.errors.PolicyViolation` otherwise. A scan loads nothing, so a
    missing digest pin (``downloads.require_digests``) does not deny it."""
    from safehub._policy.decide import DownloadRequest

    canonical = canonical_url(url)
    decision = policy.decide(DownloadRequest(canonical))
    if decision.allowed:
        return canonical
    denials = [s for s in decision.trail if s.outcome == "deny"]
    if denials and all(s.rule == "downloads.require_digests" for s in denials):
        return canonical
    decision.raise_if_denied()
    raise PolicyViolation(f"policy denies {canonical}", subject=canonical)  # unreachable


def hf_endpoint() -> str:
    """Where Hugging Face repos are read from (``$HF_ENDPOINT``, as huggingface_hub)."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def s3_endpoint() -> str:
    """The S3 endpoint requests go to (as botocore: ``$AWS_ENDPOINT_URL_S3``, then
    ``$AWS_ENDPOINT_URL``, else AWS)."""
    return (os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or
            "https://s3.amazonaws.com").rstrip("/")


def parse(spec: str) -> RemoteRef:
    """Parse a remote location; raises :class:`~safehub.errors.FetchError` when malformed."""
    lower = spec.lower()
    if lower.startswith(("https://", "http://")):
        return RemoteRef("http", spec, url=canonical_url(spec))
    if lower.startswith("hf://"):
        rest = spec[5:]
        if rest.startswith("models/"):
            rest = rest[len("models/"):]
        parts = rest.split("/")
        if len(parts) < 2:
            raise FetchError("an hf:// URL names owner/name[@revision][/path]", subject=spec)
        owner, name = parts[0], parts[1]
        revision = "main"
        if "@" in name:
            name, _, revision = name.partition("@")
        path = "/".join(parts[2:])
        if not (_REPO_PART.fullmatch(owner) and _REPO_PART.fullmatch(name)) or not revision or \
                (path and any(p in ("", ".", "..") for p in path.split("/"))):
            raise FetchError("not a Hugging Face repository: owner/name[@revision][/path]",
                             subject=spec)
        if ".." in revision.split("/") or any(c in revision for c in "?#\\"):
            raise FetchError("not a valid revision", subject=spec)
        return RemoteRef("hf", spec, repo=f"{owner}/{name}", revision=revision, path=path)
    if lower.startswith("s3://"):
        bucket, _, key = spec[5:].partition("/")
        if not _BUCKET.fullmatch(bucket):
            raise FetchError("not an S3 bucket name", subject=spec)
        if any(p in (".", "..") for p in key.split("/")):
            raise FetchError("an S3 key with . or .. segments is refused", subject=spec)
        return RemoteRef("s3", spec, bucket=bucket, path=key)
    raise FetchError("not a remote URL (https://, hf://, s3://)", subject=spec)


def hf_resolve_url(repo: str, revision: str, path: str) -> str:
    """The URL huggingface_hub downloads ``path`` of ``repo`` at ``revision`` from."""
    return (f"{hf_endpoint()}/{repo}/resolve/{quote(revision, safe='')}/"
            f"{quote(path, safe='/')}")


def s3_object_url(bucket: str, key: str, endpoint: str | None = None) -> str:
    """The path-style URL of an S3 object on the endpoint (what the policy decides on)."""
    return f"{endpoint or s3_endpoint()}/{bucket}/{quote(key, safe='/')}"
