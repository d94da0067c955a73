"""Scan options and the per-file collector of findings."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from safehub._scanner.pickle_vm import Limits, OpBudget
from safehub.findings import Finding
from safehub.rules import RULES, Severity

__all__ = ["FileScan", "ScanOptions"]


@dataclass(frozen=True)
class ScanOptions:
    """What the caller (usually the policy) adds to the default rules.

    ``allowed_globals`` are exact names (``argparse.Namespace``) or module
    wildcards (``mypkg.configs.*``) that may appear in pickles. Names the
    knowledge base rates critical can never be allowed (see
    :func:`safehub.scan.check_allowable`). ``allow_torchscript`` accepts
    TorchScript archives (their code then runs only in the sandbox).
    ``max_file_size`` bounds what is read at all; larger files get SH191.
    """

    allowed_globals: tuple[str, ...] = ()
    allow_torchscript: bool = False
    max_file_size: int = 64 << 30
    max_record_size: int = 4 << 30  # one pickle record (decompressed)
    limits: Limits = field(default_factory=Limits)
    allowed_by: str = "options"  # named in findings that the options let pass
    block_severity: Severity = Severity.LOW  # findings below this only warn
    decompile: bool = False  # attach fickling's decompilation of unsafe pickle records


class FileScan:
    """Collects the findings for one file while its format handlers run."""

    def __init__(self, path: str, size: int, options: ScanOptions):
        self.path = path
        self.size = size
        # One budget (opcodes, decompression) for the whole file, however many records and
        # readings it has.
        limits = replace(options.limits, budget=OpBudget(options.limits.max_ops,
                                                           options.limits.max_inflate))
        self.options = replace(options, limits=limits)
        self.findings: list[Finding] = []
        self.records: list[str] = []
        self.format = "unknown"

    def add(
        self,
        rule_id: str,
        message: str,
        *,
        location: str = "",
        offset: int | None = None,
        subject: str = "",
        payload: str = "",
        severity: Severity | None = None,
        allowed_by: str = "",
    ) -> None:
        self.findings.append(
            Finding(
                rule_id=rule_id,
                severity=severity or RULES[rule_id].severity,
                message=message,
                path=self.path,
                location=location,
                offset=offset,
                subject=subject,
                payload=payload,
                allowed_by=allowed_by,
                block_at=self.options.block_severity,
            )
        )
