"""Exit codes are chosen by error class (an ordered isinstance table), for every
SafehubError subclass there is, and the README says the same.

A new error class fails here until its exit code is decided: add it to DOCUMENTED (and
to the README's "Exit codes by error class" line when it exits 1).
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import safehub
from safehub.cli._exitcodes import exit_code, exit_table
from safehub.errors import SafehubError

README = Path(__file__).resolve().parents[2] / "README.md"

# Every SafehubError subclass in safehub, by where it is defined, and its documented code.
DOCUMENTED = {
    "safehub.errors.SafehubError": 2,
    "safehub.errors.PolicyViolation": 1,
    "safehub.errors.IntegrityError": 1,
    "safehub._signing.result.VerificationFailed": 1,
    "safehub._signing.result.SignatureInvalid": 1,
    "safehub.errors.UnsafeModel": 1,
    "safehub.errors.SandboxError": 1,
    "safehub._sandbox.errors.SandboxFailure": 2,  # the sandbox itself failed
    "safehub._sandbox.errors.IsolationUnavailable": 1,
    "safehub._sandbox.errors.LimitExceeded": 1,
    "safehub._sandbox.errors.RepoCodeError": 1,
    "safehub._sandbox.errors.SandboxViolation": 1,
    "safehub._sandbox.errors.UnknownEntrypoint": 1,
    "safehub._sandbox.errors.BadResult": 1,
    "safehub._sandbox.errors.ChildCrashed": 1,
    "safehub.errors.FetchError": 2,
    "safehub.errors.InvalidIdentifier": 2,
    "safehub._fetch.http.HttpError": 2,
    "safehub.errors.InternalError": 2,
    "safehub.errors.PolicyError": 2,
    "safehub._signing.result.SignatureMissing": 2,
    "safehub._torchdep.TorchMissing": 2,
    "safehub.cli._output.OutputTargetError": 2,
    "safehub._namedfile.NotARegularFile": 2,
}


def _import_all() -> None:
    for info in pkgutil.walk_packages(safehub.__path__, "safehub."):
        if info.name != "safehub.__main__":  # running it is the CLI
            importlib.import_module(info.name)


def _subclasses(cls: type[SafehubError]) -> Iterator[type[SafehubError]]:
    yield cls
    for sub in cls.__subclasses__():
        yield from _subclasses(sub)


def _safehub_errors() -> dict[str, type[SafehubError]]:
    _import_all()
    return {f"{c.__module__}.{c.__qualname__}": c for c in _subclasses(SafehubError)
            if c.__module__.startswith("safehub.")}


def test_every_error_class_has_its_documented_exit_code() -> None:
    found = _safehub_errors()
    undecided = sorted(set(found) - set(DOCUMENTED))
    assert not undecided, f"error classes with no documented exit code: {undecided}"
    for name, cls in found.items():
        # isinstance is all the table looks at: an instance needs no constructor arguments.
        assert exit_code(cls.__new__(cls)) == DOCUMENTED[name], name
    assert not sorted(set(DOCUMENTED) - set(found)), "DOCUMENTED names a class that is gone"


def test_the_table_lists_subclasses_before_their_bases() -> None:
    classes = [cls for cls, _code in exit_table()]
    for i, cls in enumerate(classes):
        shadowed = [later.__name__ for later in classes[i + 1:] if issubclass(later, cls)]
        assert not shadowed, f"{cls.__name__} hides {shadowed} (first match wins)"
    assert classes[-1] is SafehubError


def test_readme_states_the_same_codes() -> None:
    text = " ".join(README.read_text(encoding="utf-8").split())
    m = re.search(r"Exit codes by error class[^:]*: (.*?)\. ", text)
    assert m, "README lost its 'Exit codes by error class' line"
    line = m.group(1)
    one, _, _rest = line.partition("`2`")
    assert one.startswith("`1`"), line
    named = set(re.findall(r"`([A-Za-z]+)`", line))
    for name, cls in _safehub_errors().items():
        # A class the README does not name exits as its nearest named ancestor; one with
        # no named ancestor is "every other error".
        said = next((c.__name__ for c in cls.__mro__ if c.__name__ in named), None)
        readme_code = 1 if said is not None and f"`{said}`" in one else 2
        assert readme_code == DOCUMENTED[name], f"the README gives {name} exit {readme_code}"


@pytest.mark.parametrize(("error", "code"), [
    (lambda: safehub.sandbox.LimitExceeded("too slow", limit="timeout", value=1), 1),
    (lambda: safehub.sandbox.SandboxViolation("opened a socket", exc_type="PermissionError",
                                                 exc_message="denied"), 1),
    (lambda: safehub.sandbox.SandboxFailure("the supervisor failed"), 2),
    (lambda: safehub.errors.PolicyViolation("denied"), 1),
    (lambda: safehub.errors.FetchError("no network"), 2),
])
def test_the_cli_exits_by_error_class(error, code, cli, monkeypatch: pytest.MonkeyPatch) -> None:
    import safehub.cli.doctor
    import safehub.sandbox

    def run(args: object) -> int:
        raise error()

    monkeypatch.setattr(safehub.cli.doctor, "run", run)
    result = cli("doctor")
    assert result.code == code, result.err
    assert "Traceback" not in result.err


class _Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return os.system, ("echo never",)


@pytest.mark.parametrize("command", ["scan", "audit"])
def test_quiet_and_json_never_leave_an_unsafe_or_unread_file_unnamed(tmp_path: Path,
                                                                     command: str) -> None:
    """Mixed results (one unsafe, one missing) exit 1 ("any file unsafe") in every format,
    and ``-q`` (only errors on stderr) still names both files, as ``-q verify`` does."""
    import pickle

    from tests.conftest import run_module

    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(_Exploit()))
    missing = tmp_path / "missing.pkl"
    extra = ["--no-state"] if command == "audit" else []
    for quiet in ([], ["-q"]):
        for fmt in ("text", "json", "sarif"):
            result = run_module(*quiet, command, evil, missing, "-f", fmt, *extra)
            assert result.code == 1, (quiet, fmt, result.err)
            assert "Traceback" not in result.err
            lines = result.err.splitlines()
            assert any(str(missing) in line and "not " in line for line in lines), lines
            if quiet:
                assert [line for line in lines if f"{evil}: UNSAFE: SH100" in line], lines
                assert (result.out == "") == (fmt == "text")
            else:
                assert "evil.pkl" in result.out
    clean = tmp_path / "clean.pkl"
    clean.write_bytes(pickle.dumps({"lr": 0.1}))
    quiet_clean = run_module("-q", command, clean, *extra)
    assert (quiet_clean.code, quiet_clean.out, quiet_clean.err) == (0, "", "")


@pytest.mark.parametrize("command", ["scan", "audit"])
def test_sarif_of_a_run_that_scanned_nothing_is_not_a_clean_run(tmp_path: Path,
                                                                command: str) -> None:
    """Exit 2 "nothing was scanned": the SARIF a CI step uploads says so (the run did not
    succeed, with an error notification) rather than a successful run with no results."""
    import json
    import pickle

    from tests.conftest import SHARED, run_module

    jsonschema = pytest.importorskip("jsonschema")
    schema_path = SHARED / "schemas" / "sarif-schema-2.1.0.json"
    if not schema_path.is_file():
        pytest.skip(f"SARIF schema not found at {schema_path}")
    schema = json.loads(schema_path.read_text())
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "README.txt").write_text("no models here\n")
    extra = ["--no-state"] if command == "audit" else []
    result = run_module(command, notes, "-f", "sarif", *extra)
    assert result.code == 2, result.err
    doc = json.loads(result.out)
    jsonschema.validate(doc, schema)
    [invocation] = doc["runs"][0]["invocations"]
    assert invocation["executionSuccessful"] is False
    assert "nothing was scanned" in invocation["toolExecutionNotifications"][0]["message"]["text"]
    (notes / "w.pkl").write_bytes(pickle.dumps({"lr": 0.1}))
    clean = run_module(command, notes, "-f", "sarif", *extra)
    assert clean.code == 0, clean.err
    [invocation] = json.loads(clean.out)["runs"][0]["invocations"]
    assert invocation == {"executionSuccessful": True}


def test_policy_explain_of_a_missing_file_is_an_input_error(tmp_path: Path) -> None:
    """As `safehub scan missing.pkl` (exit 2): a --file that names nothing is an input
    error in one line, not a DENIED decision (exit 1) about a file that is not there."""
    from tests.conftest import run_module

    missing = tmp_path / "missing.pkl"
    for fmt in ("text", "json"):
        result = run_module("policy", "explain", "--file", missing, "-f", fmt)
        assert result.code == 2, result.err
        assert result.out == ""
        assert result.err.splitlines() == [f"safehub: {missing}: no such file or folder "
                                           "(--file)"]


def _scan_with_stdout(args: list[str], stdout: object) -> tuple[int, str]:
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "safehub", *args], stdout=stdout,
                            stderr=subprocess.PIPE, text=True, env=env)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


@pytest.mark.parametrize("command", ["scan", "audit"])
def test_a_closed_or_full_stdout_is_not_an_internal_error(tmp_path: Path,
                                                          command: str) -> None:
    """`safehub scan models | head -1`: the reader goes away. The verdict's exit code stays
    (1: unsafe), nothing else is said. `> /dev/full`: one line, exit 2. Both were
    "internal error (please report it)", exit 2."""
    import os
    import pickle

    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(_Exploit()))
    extra = ["--no-state"] if command == "audit" else []
    args = [command, str(evil), *extra]
    for fmt in ("text", "json"):
        read, write = os.pipe()
        os.close(read)  # the reader is gone before anything is written: EPIPE
        try:
            code, err = _scan_with_stdout([*args, "-f", fmt], write)
        finally:
            os.close(write)
        assert code == 1, err
        assert "internal error" not in err and "Traceback" not in err and "Broken" not in err
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    with open("/dev/full", "w") as full:
        code, err = _scan_with_stdout([*args, "-f", "json"], full)
    assert code == 2, err
    assert "safehub: cannot write to stdout: No space left on device" in err.splitlines()
    assert "internal error" not in err and "Traceback" not in err
