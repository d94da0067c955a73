"""Digests against what was recorded at download time (SH400) or pinned (SH300)."""

from __future__ import annotations

from safehub._audit.context import Context
from safehub._audit.model import FileTarget
from safehub._audit.work import Outcome
from safehub.findings import Finding

__all__ = ["integrity_findings", "needed_digests"]

_NAMES = {"sha256": "SHA-256", "git-sha1": "Git blob id"}


def needed_digests(target: FileTarget) -> tuple[str, ...]:
    """The digests the target's expectations need, in a stable order."""
    return tuple(sorted({e.algorithm for e in target.expectations}))


def integrity_findings(target: FileTarget, outcome: Outcome, ctx: Context) -> list[Finding]:
    """A finding for every expectation the file does not meet."""
    entry = outcome.entry
    if entry is None:
        return []  # unreadable: reported as such
    size = outcome.report.size
    findings = []
    for exp in target.expectations:
        digest = entry.digests.get(exp.algorithm)
        if digest is None or exp.matches(digest, size):
            continue
        name = _NAMES[exp.algorithm]
        wanted = exp.digest if not exp.others else " or ".join((exp.digest, *exp.others))
        if exp.size is not None and exp.size != size:
            detail = f"it has {size} bytes, {exp.source} says {exp.size}"
        else:
            detail = f"its {name} is {digest}, {exp.source} says {wanted}"
        if exp.rule_id == "SH400":
            message = f"changed since it was downloaded: {detail}"
        else:
            message = f"does not match its pin: {detail}"
        findings.append(ctx.finding(exp.rule_id, message, target.path, subject=exp.source,
                                    payload=""))
    return findings
