"""The sandbox's verdicts: one ``SandboxError`` subclass per kind, each with its rule id.

Text that comes from the child (exception messages, tracebacks, key names) is
untrusted: it is cut to a bounded length and stripped of terminal control
characters before it lands in a message.
"""

from __future__ import annotations

from collections.abc import Sequence

from safehub._sandbox.spec import Layer
from safehub.errors import SandboxError

__all__ = [
    "BadResult",
    "ChildCrashed",
    "IsolationUnavailable",
    "LimitExceeded",
    "RepoCodeError",
    "SandboxFailure",
    "SandboxViolation",
    "UnknownEntrypoint",
    "clean_text",
]

def clean_text(text: object, limit: int = 2000) -> str:
    """Untrusted text made safe to keep: every control, format, separator and surrogate
    character escaped except LF and TAB (docstrings and tracebacks keep their lines; whoever shows
    them renders the lines as a marked block), length bounded."""
    from safehub._format.escape import escape_line

    s = text if isinstance(text, str) else repr(text)
    # Escaped line by line; LF and TAB (which only moves along a line) are kept.
    s = "\n".join("\t".join(escape_line(cell) for cell in line.split("\t"))
                  for line in s.replace("\r\n", "\n").split("\n"))
    return s if len(s) <= limit else s[:limit] + f"... [{len(s) - limit} more characters]"


class SandboxFailure(SandboxError):
    """A sandboxed call did not produce a result. ``rule_id`` is its SH5xx rule."""

    rule_id = "SH504"

    def __init__(self, message: str, *, subject: str | None = None, fix: str | None = None,
                 details: Sequence[str] = ()):
        super().__init__(message, subject=subject, fix=fix)
        self.details = list(details)

    def _details(self) -> list[str]:
        return [f"  {line}" for line in self.details] + [f"  rule: {self.rule_id}"]


class IsolationUnavailable(SandboxFailure):
    """A required layer cannot be applied on this machine; nothing ran (SH500)."""

    rule_id = "SH500"

    def __init__(self, message: str, *, layer: Layer | None, reason: str,
                 subject: str | None = None, fix: str | None = None):
        super().__init__(message, subject=subject, fix=fix, details=[f"why: {reason}"])
        self.layer = layer
        self.reason = reason


class LimitExceeded(SandboxFailure):
    """The code hit a resource limit: ``limit`` names it (timeout, memory, cpu, ...) (SH501)."""

    rule_id = "SH501"

    def __init__(self, message: str, *, limit: str, value: float | int, subject: str | None = None,
                 fix: str | None = None, details: Sequence[str] = ()):
        super().__init__(message, subject=subject, fix=fix, details=details)
        self.limit = limit
        self.value = value


class RepoCodeError(SandboxFailure):
    """The repository's code raised an exception inside the sandbox (SH505)."""

    rule_id = "SH505"

    def __init__(self, message: str, *, exc_type: str, exc_message: str, traceback: str = "",
                 subject: str | None = None, fix: str | None = None,
                 details: Sequence[str] = ()):
        super().__init__(message, subject=subject, fix=fix, details=details)
        self.exc_type = exc_type
        self.exc_message = exc_message
        self.traceback = traceback

    def _details(self) -> list[str]:
        lines = super()._details()
        if self.traceback:
            from safehub._format.escape import escape_block

            # The child's own text, as a marked block: it cannot pass for safehub's lines.
            lines.append("  traceback (from the sandbox):")
            tail = "\n".join(self.traceback.replace("\r", "\n").split("\n")[-12:])
            lines.extend(escape_block(tail))
        return lines


class UnknownEntrypoint(SandboxFailure):
    """The hubconf has no callable of that name (SH520); ``entrypoints`` lists those it has.

    The message is one line, as torch.hub's ``Cannot find callable NAME in hubconf``,
    followed by the names that exist.
    """

    rule_id = "SH520"

    def __init__(self, name: str, entrypoints: Sequence[str], *, subject: str | None = None):
        shown = ", ".join(entrypoints[:50]) + (" ..." if len(entrypoints) > 50 else "")
        super().__init__(f"Cannot find callable {name} in hubconf; its entrypoints are: "
                         f"{shown or '(none)'}", subject=subject,
                         fix="use one of the listed entrypoints (`safehub list REPO`)")
        self.name = name
        self.entrypoints = list(entrypoints)


class SandboxViolation(RepoCodeError):
    """The code attempted something the sandbox forbids (exec, network, files...) (SH502)."""

    rule_id = "SH502"


class BadResult(SandboxFailure):
    """The code returned something other than tensors, or a malformed result (SH503).

    ``keys`` names the offending entries when there are any.
    """

    rule_id = "SH503"

    def __init__(self, message: str, *, keys: Sequence[str] = (), subject: str | None = None,
                 fix: str | None = None, details: Sequence[str] = ()):
        super().__init__(message, subject=subject, fix=fix, details=details)
        self.keys = list(keys)


class ChildCrashed(SandboxFailure):
    """The child died (signal or exit) without a result (SH504)."""

    rule_id = "SH504"

    def __init__(self, message: str, *, signal: int | None = None, exit_code: int | None = None,
                 subject: str | None = None, fix: str | None = None,
                 details: Sequence[str] = ()):
        super().__init__(message, subject=subject, fix=fix, details=details)
        self.signal = signal
        self.exit_code = exit_code
