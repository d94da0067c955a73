"""The exception hierarchy: one root, one type per kind of verdict.

Every error carries ``diagnostics()``: what happened, to which input, and the
narrowest change that would fix it. The CLI prints it; library callers can show
it or inspect the structured attributes.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "FetchError",
    "IntegrityError",
    "InternalError",
    "InvalidIdentifier",
    "PolicyError",
    "PolicyIssue",
    "PolicyViolation",
    "SafehubError",
    "SandboxError",
    "UnsafeModel",
]


class SafehubError(Exception):
    """Root of every error safehub raises on purpose.

    ``subject`` names the input the error is about (a file, a repo, a URL);
    ``fix`` is the narrowest change that would make the operation succeed.
    """

    # The fix in the CLI's words (flags, not keyword arguments), where it differs.
    cli_fix: str | None = None

    def __init__(self, message: str, *, subject: str | None = None, fix: str | None = None,
                 cli_fix: str | None = None):
        super().__init__(message)
        self.message = message
        self.subject = subject
        self.fix = fix
        if cli_fix is not None:
            self.cli_fix = cli_fix

    def diagnostics(self, surface: str = "api") -> str:
        """A multi-line explanation for humans: what, where, and what to do.

        ``surface="cli"`` words the fix for the command line (``cli_fix``) where the
        Python wording (keyword arguments, classes) would not help a CLI user.

        Messages, inputs and details often quote text from files, repositories or servers,
        so each line is escaped on its own (``safehub._format.escape``): none of it can
        start a line of its own, move the cursor or reorder the text.
        """
        from safehub._format.escape import escape_line

        lines = [escape_line(self.message)]
        if self.subject:
            lines.append(f"  input: {escape_line(self.subject)}")
        lines.extend(escape_line(line) for line in self._details())
        fix = self.cli_fix if surface == "cli" and self.cli_fix else self.fix
        if fix:
            lines.append(f"  fix: {escape_line(fix)}")
        return "\n".join(lines)

    def summary(self, surface: str = "api", *, details: bool = True) -> str:
        """The error as ONE escaped line: ``INPUT: MESSAGE [DETAIL; N more]; fix: FIX``.

        The input is named first unless the message already names it; the first detail
        (a policy problem, a finding, a rule) is kept in brackets with a count of the
        others, which :meth:`diagnostics` lists (``details=False`` leaves them out). This is
        what the CLI prints on stderr, so that one error is one line for people, logs and
        ``grep``; ``surface="cli"`` words the fix and the hint for the command line.
        """
        from safehub._format.escape import escape_line

        message = escape_line(self.message)
        line = message
        if self.subject:
            subject = escape_line(self.subject)
            if subject not in message:
                line = f"{subject}: {message}"
        extra = ([escape_line(d.lstrip(" ")) for d in self._details() if d.strip()]
                 if details else [])
        if extra:
            where = " with -v" if surface == "cli" else " in diagnostics()"
            more = f"; {len(extra) - 1} more{where}" if len(extra) > 1 else ""
            line += f" [{extra[0]}{more}]"
        fix = self.cli_fix if surface == "cli" and self.cli_fix else self.fix
        if fix:
            line += f"; fix: {escape_line(fix)}"
        return line

    def detail_lines(self) -> list[str]:
        """The details :meth:`diagnostics` lists (rules, findings, policy problems, a
        sandbox traceback as a marked block), each one escaped line, indented."""
        from safehub._format.escape import escape_line

        return [escape_line(d) for d in self._details() if d.strip()]

    def _details(self) -> list[str]:
        return []


class PolicyViolation(SafehubError):
    """The policy denied the request. ``trail`` holds the rules that decided it."""

    def __init__(
        self,
        message: str,
        *,
        subject: str | None = None,
        fix: str | None = None,
        trail: Sequence[str] = (),
    ):
        super().__init__(message, subject=subject, fix=fix)
        self.trail = list(trail)

    def _details(self) -> list[str]:
        return [f"  rule: {step}" for step in self.trail]


class IntegrityError(SafehubError):
    """A digest, pin or signature did not match the bytes at hand."""


class UnsafeModel(SafehubError):
    """Scanning found something that deserializing would execute or do.

    ``report`` is the :class:`safehub.scan.ScanReport` (or file report) that
    holds the findings.
    """

    def __init__(
        self,
        message: str,
        *,
        subject: str | None = None,
        fix: str | None = None,
        report: object | None = None,
    ):
        super().__init__(message, subject=subject, fix=fix)
        self.report = report

    def _details(self) -> list[str]:
        findings = getattr(self.report, "findings", None) or []
        return [f"  {f.rule_id} {f.severity.value}: {f.message}" for f in findings[:20]]


class SandboxError(SafehubError):
    """The sandboxed child hit a limit, died, or could not be isolated as required."""


class FetchError(SafehubError):
    """Getting code or weights failed (network, HTTP status, size, archive validation)."""


class InvalidIdentifier(FetchError, ValueError):
    """A repository name, ref or URL has no canonical form (malformed or ambiguous).

    Also a ``ValueError``, which is what torch.hub raises for a URL it cannot parse.
    """
class InternalError(SafehubError):
    """An invariant of safehub's own code did not hold: a bug. The operation is refused
    (raised instead of ``assert``, which ``python -O`` removes)."""

    def __init__(self, message: str, *, subject: str | None = None, fix: str | None = None):
        super().__init__(f"internal error: {message}", subject=subject,
                         fix=fix or "report this as a safehub bug, with the command and input")


class PolicyIssue:
    """One problem in a policy file: where it is and what is wrong."""

    __slots__ = ("file", "key", "line", "message")

    def __init__(self, file: str, key: str, message: str, line: int | None = None):
        self.file = file
        self.key = key
        self.message = message
        self.line = line

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.key or '<root>'}: {self.message}"

    def __repr__(self) -> str:
        return f"PolicyIssue({self!s})"


class PolicyError(SafehubError):
    """A policy file is missing or invalid. ``issues`` lists every problem at once."""

    def __init__(
        self,
        message: str,
        *,
        subject: str | None = None,
        fix: str | None = None,
        issues: Sequence[PolicyIssue] = (),
    ):
        super().__init__(message, subject=subject, fix=fix)
        self.issues = list(issues)

    def _details(self) -> list[str]:
        return [f"  {issue}" for issue in self.issues]
