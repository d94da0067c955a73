"""Findings and verdicts: the values every stage reports and every formatter renders."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum

from safehub.rules import RULES, Severity

__all__ = [
    "NOT_CHECKED_RULES",
    "FileReport",
    "Finding",
    "PolicySource",
    "ScanReport",
    "Severity",
    "Skipped",
    "Verdict",
]

# Rules meaning "this was not (fully) checked": unsupported compression, limits, analyzer
# failure, unreadable input, unknown format.
NOT_CHECKED_RULES = frozenset({"SH116", "SH190", "SH191", "SH192", "SH193"})


class Verdict(str, Enum):
    """The outcome for one file."""

    CLEAN = "clean"  # scanned completely; nothing blocking
    UNSAFE = "unsafe"  # at least one blocking finding
    UNKNOWN = "unknown"  # not a format safehub can check: never reported as clean
    ERROR = "error"  # could not be read


@dataclass(frozen=True)
class Finding:
    """One observation about one input, with where it is and what it means.

    ``location`` is the record inside an archive (``archive/data.pkl``) or empty
    for the file itself; ``offset`` is the byte offset inside that record or file.
    ``subject`` is what the finding is about (a global like ``posix.system``, an
    opcode, a key), ``payload`` a rendering of what loading would do.
    ``allowed_by`` is set when a policy or option let the finding pass;
    ``block_at`` is the severity from which findings block (the policy's
    ``scanner.block_severity``): below it a finding only warns.
    """

    rule_id: str
    severity: Severity
    message: str
    path: str = ""
    location: str = ""
    offset: int | None = None
    subject: str = ""
    payload: str = ""
    allowed_by: str = ""
    block_at: Severity = Severity.LOW

    @property
    def rule_name(self) -> str:
        return RULES[self.rule_id].name

    @property
    def blocking(self) -> bool:
        """Whether this finding makes its file unsafe.

        Findings that say part of the input was not checked block whatever the
        policy's threshold: nothing unscanned is ever passed as clean.
        """
        if self.allowed_by:
            return False
        return self.rule_id in NOT_CHECKED_RULES or self.severity.rank >= self.block_at.rank

    def fingerprint(self) -> str:
        """A stable id for the finding that survives re-runs and unrelated edits.

        It hashes what the finding is (rule, path, record, subject), not where the
        bytes happen to sit, so findings do not churn between runs.
        """
        import hashlib  # only reports with fingerprints need it

        key = "\x1f".join((self.rule_id, self.path, self.location, self.subject))
        return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]

    def with_path(self, path: str) -> Finding:
        return replace(self, path=path)


@dataclass(frozen=True)
class Skipped:
    """An input that was deliberately not scanned, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class FileReport:
    """Everything the scanner found in one file."""

    path: str
    format: str
    size: int
    findings: tuple[Finding, ...] = ()
    records: tuple[str, ...] = ()  # pickle-bearing records that were analyzed
    error: str = ""
    # (record, Python source) for unsafe pickle records, when decompilation was asked for
    decompiled: tuple[tuple[str, str], ...] = ()

    @property
    def verdict(self) -> Verdict:
        if self.error:
            return Verdict.ERROR
        # A file can be unknown as a whole yet hold something dangerous (a polyglot):
        # real findings win over "not recognized".
        if any(f.blocking and f.rule_id != "SH190" for f in self.findings):
            return Verdict.UNSAFE
        if self.format == "unknown":
            return Verdict.UNKNOWN
        if any(f.blocking for f in self.findings):
            return Verdict.UNSAFE
        return Verdict.CLEAN

@dataclass(frozen=True)
class PolicySource:
    """Which policy decided and how it was selected, for every report to name."""

    name: str
    chain: tuple[str, ...]  # preset:NAME or file paths, root first
    selected_by: str  # "selected explicitly", "selected by $SAFEHUB_POLICY", ...

    def describe(self) -> str:
        """``strict (/p/acme.toml <- preset:strict; selected by $SAFEHUB_POLICY)``."""
        return f"{self.name} ({' <- '.join(reversed(self.chain))}; {self.selected_by})"

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "chain": list(self.chain), "selected_by": self.selected_by}


@dataclass(frozen=True)
class ScanReport:
    """The result of scanning one or more inputs (``policy``: the policy applied, if any)."""

    files: tuple[FileReport, ...] = ()
    skipped: tuple[Skipped, ...] = ()
    roots: tuple[str, ...] = field(default=())
    policy: PolicySource | None = None

    @property
    def findings(self) -> list[Finding]:
        return [f for report in self.files for f in report.findings]

    @property
    def clean(self) -> bool:
        """True only when something was scanned and every scanned file is clean."""
        return bool(self.files) and all(r.verdict is Verdict.CLEAN for r in self.files)

    @property
    def unsafe(self) -> list[FileReport]:
        return [r for r in self.files if r.verdict is Verdict.UNSAFE]

    @property
    def unscanned(self) -> list[FileReport]:
        return [r for r in self.files if r.verdict in (Verdict.UNKNOWN, Verdict.ERROR)]
