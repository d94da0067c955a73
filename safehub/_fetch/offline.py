"""Offline mode: whether it is on, and what the policy says about cached downloads.

Offline (``SAFEHUB_OFFLINE=1``, policy ``downloads.offline``, or
``Fetcher(offline=True)``; any one of them is enough, none can switch another
off) means zero network: refs resolve from the lockfile or the cache, files come
from the cache, and anything missing is an error naming it.

The policy engine denies every *download* while offline. Serving a cached file is
not a download, but the URL rules still apply to it (a URL the policy no longer
allows is not served from the cache either, and pins still bind), so
:func:`cached_download_decision` decides a cache hit with the same scheme,
allowlist and pin rules, minus the offline denial.
"""

from __future__ import annotations

import os

from safehub._fetch.hops import refusal
from safehub._policy.decide import Decision, DownloadRequest, Requirement, Step
from safehub.policy import Policy

__all__ = ["cached_download_decision", "offline_requested"]

_TRUE = {"1", "true", "yes", "on"}


def offline_requested(policy: Policy, explicit: bool | None) -> bool:
    """Whether to stay offline: the argument, the environment or the policy says so."""
    env = os.environ.get("SAFEHUB_OFFLINE", "").strip().lower() in _TRUE
    return bool(explicit) or env or policy.model.downloads.offline


def cached_download_decision(policy: Policy, req: DownloadRequest) -> Decision:
    """Decide serving ``req.url`` from the cache while offline."""
    downloads = policy.model.downloads
    steps = [Step("downloads.offline", policy.where("downloads", "offline"), "note",
                  "offline: served from the cache only")]
    reason = refusal(policy, req.url)
    if reason is not None:
        steps.append(Step("downloads.allowed_urls", policy.where("downloads", "allowed_urls"),
                          "deny", f"{reason} is not allowed"))
        return Decision(False, req.url, tuple(steps), fix="allow the URL in "
                        "downloads.allowed_urls", policy=policy.name)
    requirements: list[Requirement] = []
    pin_key = req.url if req.url in downloads.pins else (
        req.file_name if req.file_name and req.file_name in downloads.pins else None)
    if pin_key is not None:
        requirements.append(Requirement("sha256", downloads.pins[pin_key],
                                        f"downloads.pins.{pin_key}"))
        steps.append(Step(f"downloads.pins.{pin_key}", policy.where("downloads", "pins"),
                          "require", f"SHA-256 must be {downloads.pins[pin_key]}"))
    elif req.known_digest:
        requirements.append(Requirement("sha256", req.known_digest, "lockfile"))
        steps.append(Step("downloads", "lockfile", "require",
                          f"SHA-256 must be {req.known_digest} (lockfile)"))
    elif downloads.require_digests:
        steps.append(Step("downloads.require_digests",
                          policy.where("downloads", "require_digests"), "deny",
                          "the file has no SHA-256 pin and the policy requires one"))
        return Decision(False, req.url, tuple(steps), fix="pin it in [downloads.pins] or "
                        "lock it with `safehub lock`", policy=policy.name)
    steps.append(Step("downloads.allowed_urls", policy.where("downloads", "allowed_urls"),
                      "allow", "matches downloads.allowed_urls"))
    return Decision(True, req.url, tuple(steps), tuple(requirements), policy=policy.name)
