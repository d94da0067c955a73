"""Offline mode: whether it is on, and what the policy says about cached downloads.

Offline (``SAFEHUB_OFFLINE=1``, policy ``downloads.offline``, or
``Fetcher(offline=True)``; any one of them is enough, none can switch another
off) means zero network: refs resolve from the lockfile or the cache, files come
from the cache, and anything missing is an error naming it.

The policy engine denies every *download* while offline. Serving a cached file is
not a download, but the URL rules still apply to it (a URL the policy no longer
allows is not served from the cache either, and pins still bind):
:func:`cached_download_decision` asks the policy with ``from_cache=True``.
"""

from __future__ import annotations

import os
from dataclasses import replace

from safehub._policy.decide import TRUE_WORDS, Decision, DownloadRequest
from safehub._policy.policy import Policy

__all__ = ["cached_download_decision", "offline_requested"]


def offline_requested(policy: Policy, explicit: bool | None) -> bool:
    """Whether to stay offline: the argument, the environment or the policy says so."""
    env = os.environ.get("SAFEHUB_OFFLINE", "").strip().lower() in TRUE_WORDS
    return bool(explicit) or env or policy.model.downloads.offline


def cached_download_decision(policy: Policy, req: DownloadRequest) -> Decision:
    """Decide serving ``req.url`` from the cache while offline: every URL rule, no network."""
    return policy.decide(replace(req, from_cache=True))
