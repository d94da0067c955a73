"""What every stage of an audit shares: the policy, the pins, and how findings are made."""

from __future__ import annotations

from dataclasses import dataclass

from safehub._audit.model import make_finding
from safehub._audit.pins import Pins
from safehub._policy.policy import Policy
from safehub.findings import Finding
from safehub.rules import Severity

__all__ = ["Context"]


@dataclass(frozen=True)
class Context:
    """The policy in force, the digests pinned outside the cache, and the blocking
    threshold (the policy's ``scanner.block_severity``)."""

    policy: Policy
    pins: Pins

    @property
    def block_at(self) -> Severity:
        return Severity(self.policy.model.scanner.block_severity)

    @property
    def digests_required(self) -> bool:
        """Whether the policy requires a full SHA-256 (or signature) for every download."""
        return self.policy.model.downloads.require_digests

    def finding(self, rule_id: str, message: str, path: str, *, subject: str = "",
                severity: Severity | None = None, location: str = "",
                payload: str = "") -> Finding:
        """A finding that blocks at the policy's threshold."""
        return make_finding(rule_id, message, path, block_at=self.block_at, subject=subject,
                            severity=severity, location=location, payload=payload)
