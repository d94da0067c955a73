"""Remote locations on the command line (``scan URL``, ``audit URL``): the policy that
decides their URLs, and what reading them cost, on stderr."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from safehub._remote.scan import RemoteScan
from safehub.findings import ScanReport
from safehub.scan import ScanOptions

if TYPE_CHECKING:
    from safehub.policy import Policy

__all__ = ["log_costs", "scan_urls"]

log = logging.getLogger("safehub")


def log_costs(result: RemoteScan) -> None:
    """One stderr line per file: requests and bytes it took."""
    for path, stats in sorted(result.costs.items()):
        log.info("fetched %d bytes in %d requests: %s", stats.bytes, stats.requests, path)
    if result.listing.requests:
        log.info("listing took %d requests, %d bytes", result.listing.requests,
                 result.listing.bytes)


def scan_urls(urls: Sequence[str], policy_spec: Policy | str | None, options: ScanOptions,
              local: ScanReport, progress: Callable[[str], None] | None) -> ScanReport:
    """Scan remote URLs and merge them with the local report."""
    from safehub.policy import load_policy
    from safehub.remote import scan_remote

    policy = load_policy(policy_spec)
    result = scan_remote(urls, policy=policy, options=options, progress=progress)
    log_costs(result)
    return ScanReport(files=(*local.files, *result.report.files),
                      skipped=(*local.skipped, *result.report.skipped),
                      roots=(*local.roots, *result.report.roots))
