"""The sandbox's error types: rule ids that exist, and untrusted text made safe to print."""

from __future__ import annotations

from safehub._sandbox.errors import clean_text
from safehub.errors import SandboxError
from safehub.rules import RULES
from safehub.sandbox import (
    BadResult,
    ChildCrashed,
    IsolationUnavailable,
    Layer,
    LimitExceeded,
    RepoCodeError,
    SandboxFailure,
    SandboxViolation,
)


def test_every_sandbox_error_has_a_catalogued_rule() -> None:
    kinds = [IsolationUnavailable, LimitExceeded, SandboxViolation, BadResult, ChildCrashed,
             RepoCodeError]
    assert len({k.rule_id for k in kinds}) == len(kinds)
    for kind in kinds:
        assert issubclass(kind, SandboxFailure) and issubclass(kind, SandboxError)
        assert kind.rule_id in RULES and RULES[kind.rule_id].name


def test_diagnostics_say_what_why_and_the_fix() -> None:
    err = IsolationUnavailable("required sandbox layer 'landlock' is not available",
                               layer=Layer.LANDLOCK, reason="kernel too old",
                               subject="repo:model", fix="run on Linux 5.13+")
    text = err.diagnostics()
    for part in ("landlock", "kernel too old", "repo:model", "run on Linux 5.13+", "SH500"):
        assert part in text


def test_untrusted_text_is_escaped_and_bounded() -> None:
    hostile = "ok\x1b[2J\x1b]0;pwned\x07\u202eevil\r\nnext\tline"
    cleaned = clean_text(hostile)
    assert "\x1b" not in cleaned and "\x07" not in cleaned and "\u202e" not in cleaned
    assert "\r" not in cleaned and "\n" in cleaned and "\t" in cleaned
    assert "\\x1b" in cleaned and "\\u202e" in cleaned
    assert clean_text("x" * 5000, 100).startswith("x" * 100)
    assert len(clean_text("x" * 5000, 100)) < 200
    assert clean_text(b"bytes") == "b'bytes'"
