"""Which URLs a request may reach, checked on every hop of a redirect chain.

The first URL of a weights download is decided by the policy
(:class:`~safehub.policy.DownloadRequest`); every later hop must still be https
(plain http only to loopback with ``downloads.allow_http_loopback``) and fall
under ``downloads.allowed_urls``. Digest pins and ``require_digests`` apply to the
URL asked for, not to the CDN it redirects to, so hops are checked against the
allowlist only.

API and archive requests start at the policy's ``downloads.github_api``; their
hops may stay on that origin, go to a URL under ``downloads.allowed_urls``, or,
for the public GitHub API only, to GitHub's archive host ``codeload.github.com``.
"""

from __future__ import annotations

from typing import NoReturn

from safehub._fetch.credentials import Origin
from safehub._fetch.http import HopCheck
from safehub._policy.policy import Policy
from safehub._policy.urls import CanonicalURL, is_loopback_http, parse_url, url_matches_prefix
from safehub.errors import InvalidIdentifier, PolicyViolation

__all__ = ["GITHUB_ARCHIVE_HOSTS", "api_hops", "recheck_hops", "refusal", "weights_hops"]

# Where api.github.com sends zipball/tarball requests.
GITHUB_ARCHIVE_HOSTS = {"api.github.com": ("https://codeload.github.com/",)}


def refusal(policy: Policy, url: str) -> str | None:
    """Why ``url`` may not be fetched under ``policy`` (scheme and allowlist), or None.

    ``url`` is judged in canonical form (the HTTP client requests exactly that form)."""
    downloads = policy.model.downloads
    try:
        url = str(parse_url(url))
    except InvalidIdentifier as exc:
        return exc.message
    scheme = parse_url(url).scheme
    if scheme == "http":
        if not (downloads.allow_http_loopback and is_loopback_http(url)):
            return "plain http (only loopback with downloads.allow_http_loopback)"
    elif scheme != "https":
        return f"the {scheme or 'missing'} scheme"
    if not any(url_matches_prefix(url, p) for p in downloads.allowed_urls):
        return "the URL is outside downloads.allowed_urls"
    return None


def _deny(policy: Policy, url: str, previous: str | None, reason: str, fix: str) -> NoReturn:
    what = f"redirect from {previous} to {url}" if previous else url
    raise PolicyViolation(f"policy {policy.name!r} denies {what}: {reason}", subject=url,
                          fix=fix, trail=[f"deny    downloads.allowed_urls: {reason}"])


def _prefix_of(url: str) -> str:
    try:
        parts: CanonicalURL = parse_url(url)
    except InvalidIdentifier:
        return url
    return f"{parts.scheme}://{parts.netloc}/"


def weights_hops(policy: Policy) -> HopCheck:
    """The hop check for weights downloads."""
    def check(url: str, previous: str | None) -> None:
        reason = refusal(policy, url)
        if reason is not None:
            _deny(policy, url, previous, reason,
                  f"add {_prefix_of(url)!r} to downloads.allowed_urls if you trust that host")
    return check


def recheck_hops(check: HopCheck, url: str, hops: tuple[str, ...], final_url: str) -> None:
    """Re-decide, under the current policy, the redirect chain cached bytes came through.

    A cache hit must be refused wherever a fresh fetch would be: a policy that no longer
    allows a redirect host must not be served what came from it. Records written before
    hops were kept name only the final URL, which is then checked alone."""
    chain = hops if hops else ((final_url,) if final_url and final_url != url else ())
    previous = url
    for hop in chain:
        check(hop, previous)
        previous = hop


def api_hops(policy: Policy, api_base: str) -> HopCheck:
    """The hop check for API calls and repo archive downloads."""
    api = Origin.of(api_base)
    extra = GITHUB_ARCHIVE_HOSTS.get(api.host, ()) if api.scheme == "https" else ()
    allow_http = policy.model.downloads.allow_http_loopback

    def check(url: str, previous: str | None) -> None:
        try:
            scheme = parse_url(url).scheme
        except InvalidIdentifier as exc:
            _deny(policy, url, previous, exc.message, exc.fix or "use a well-formed URL")
        if scheme != "https" and not (scheme == "http" and allow_http
                                      and is_loopback_http(url)):
            _deny(policy, url, previous, f"the {scheme or 'missing'} scheme",
                  "use an https:// API base in downloads.github_api")
        if Origin.of(url) == api or any(url_matches_prefix(url, p) for p in extra):
            return
        if refusal(policy, url) is None:
            return
        _deny(policy, url, previous, "neither the API host nor under downloads.allowed_urls",
              f"add {_prefix_of(url)!r} to downloads.allowed_urls if it is your archive host")
    return check
