"""The exit code an error means, chosen by its class.

An explicit table, searched in order with ``isinstance``: the first row whose class the
error is an instance of decides, so a subclass is listed before its base. An error
class added later takes its nearest listed ancestor's code; the test over every
``SafehubError`` subclass (tests/cli/test_exit_codes.py) makes that choice visible.

``1`` means safehub refused or contained something (findings, a denial, bytes that do
not match, a signature that does not verify, the sandbox stopping the code); ``2``
means it could not do the job (usage, unreadable input, invalid policy, network, the
sandbox itself failing).
"""

from __future__ import annotations

from safehub.cli._common import EXIT_ERROR, EXIT_FINDINGS
from safehub.errors import (
    IntegrityError,
    PolicyViolation,
    SafehubError,
    SandboxError,
    UnsafeModel,
)

__all__ = ["exit_code", "exit_table"]


def exit_table() -> tuple[tuple[type[SafehubError], int], ...]:
    """(error class, exit code) rows, most specific first."""
    # Imported here: the sandbox's errors are not part of `safehub scan`'s start-up.
    from safehub._sandbox.errors import (
        BadResult,
        ChildCrashed,
        IsolationUnavailable,
        LimitExceeded,
        RepoCodeError,
        SandboxFailure,
        UnknownEntrypoint,
    )

    return (
        # The sandbox refused or contained the code (SandboxViolation is a RepoCodeError).
        (IsolationUnavailable, EXIT_FINDINGS),
        (LimitExceeded, EXIT_FINDINGS),
        (RepoCodeError, EXIT_FINDINGS),
        (UnknownEntrypoint, EXIT_FINDINGS),
        (BadResult, EXIT_FINDINGS),
        (ChildCrashed, EXIT_FINDINGS),
        # The sandbox itself failed (its base class, raised as such).
        (SandboxFailure, EXIT_ERROR),
        (SandboxError, EXIT_FINDINGS),
        (PolicyViolation, EXIT_FINDINGS),
        (UnsafeModel, EXIT_FINDINGS),
        (IntegrityError, EXIT_FINDINGS),  # signatures that do not verify included
        (SafehubError, EXIT_ERROR),
    )


def exit_code(exc: SafehubError) -> int:
    """The CLI's exit code for ``exc``."""
    for cls, code in exit_table():
        if isinstance(exc, cls):
            return code
    return EXIT_ERROR  # not reached: SafehubError is the last row
