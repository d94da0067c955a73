"""Hostile text from files and repositories cannot forge a line in any output.

Every place such text reaches the user is driven with a name, docstring, payload or
exception text that carries each dangerous character (LF, CR, ESC + cursor movement, C1
NEL, bidi overrides and isolates, U+061C, U+2028/2029) followed by a line that would pass
for safehub's own. The check on every stream: no unsafe character remains (other than the
report's own newlines) and no line starts with the forged text.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import re
import textwrap
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CliResult

Cli = Callable[..., CliResult]

FORGED = "SH-FORGED: ok"  # short: file names hold 255 bytes
CHARS = ["\n", "\r", "\x1b[2K\r", "\x85", "\u202e", "\u2066", "\u061c", "\u200f", "\u2028",
         "\u2029", "\x0b", "\x0c", "\x1c"]
HOSTILE = "tiny" + "".join(f"{ch}{FORGED}" for ch in CHARS)
UNSAFE = {"Cc", "Cf", "Cs", "Zl", "Zp"}


def assert_inert(text: str, where: str) -> None:
    """Nothing in ``text`` can start a line, move the cursor or reorder what follows."""
    bad = sorted({f"U+{ord(c):04X}" for c in text
                  if c != "\n" and unicodedata.category(c) in UNSAFE})
    assert not bad, f"{where}: unsafe characters {bad} in {text!r}"
    forged = [line for line in text.split("\n") if line.lstrip().startswith(FORGED)]
    assert not forged, f"{where}: forged lines {forged}"
    # A child's traceback may appear, but only inside a marked block, never as our own.
    unmarked = [line for line in text.split("\n") if not line.lstrip().startswith("| ")]
    assert not any("Traceback" in line for line in unmarked), f"{where}: {text}"


def assert_streams(result: CliResult, where: str) -> None:
    assert_inert(result.out, f"{where} stdout")
    assert_inert(result.err, f"{where} stderr")


class _Exploit:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, ("echo " + HOSTILE,)


@pytest.fixture
def hostile_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / f"{HOSTILE}.pkl").write_bytes(pickle.dumps(_Exploit()))
    (folder / f"{HOSTILE}.bin").write_bytes(b"\0not a model")
    (folder / f"clean-{HOSTILE}.pkl").write_bytes(pickle.dumps({"lr": 0.1}))
    return folder


def _sarif_schema() -> dict[str, Any]:
    from tests.conftest import SHARED

    path = SHARED / "schemas" / "sarif-schema-2.1.0.json"
    if not path.is_file():
        pytest.skip(f"SARIF schema not found at {path} (../shared absent)")
    return json.loads(path.read_text())


def _check_sarif(text: str) -> dict[str, Any]:
    jsonschema = pytest.importorskip("jsonschema")
    doc = json.loads(text)
    jsonschema.validate(doc, _sarif_schema())
    return doc


@pytest.mark.parametrize("command", ["scan", "audit"])
def test_scan_and_audit_reports_in_every_format(cli: Cli, hostile_folder: Path,
                                                 tmp_path: Path, command: str) -> None:
    extra = ["--no-state"] if command == "audit" else []
    text = cli("-v", command, hostile_folder, *extra)
    assert text.code == 1, text.err
    assert_streams(text, f"{command} text")
    assert "tiny\\n" + FORGED in text.out  # shown, escaped, on the file's own line

    as_json = cli(command, hostile_folder, "-f", "json", *extra)
    assert as_json.code == 1
    assert_streams(as_json, f"{command} json")
    doc = json.loads(as_json.out)
    paths = {os.path.basename(f["path"]) for f in doc["files"]}
    assert f"{HOSTILE}.pkl" in paths  # exact text back from JSON
    assert all(f["path_bytes"] is None for f in doc["files"])

    sarif = cli(command, hostile_folder, "-f", "sarif", *extra)
    assert sarif.code == 1
    assert_streams(sarif, f"{command} sarif")
    doc = _check_sarif(sarif.out)
    for result in doc["runs"][0]["results"]:
        assert_inert(result["message"]["text"], "sarif message")


def test_non_utf8_names_in_json_keep_their_bytes(cli: Cli, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    raw = os.fsencode(folder) + b"/weights\xff\xfe\n.pkl"
    with open(raw, "wb") as fh:
        fh.write(pickle.dumps(_Exploit()))
    out = tmp_path / "report.json"
    result = cli("scan", folder, "-f", "json", "-o", out)
    assert result.code == 1, result.err
    assert_streams(result, "scan json non-UTF-8")
    text = out.read_text(encoding="utf-8")  # valid UTF-8, whatever the names were
    assert_inert(text, "json file")
    [entry] = json.loads(text)["files"]
    assert base64.b64decode(entry["path_bytes"]) == raw
    assert entry["path"].endswith("weights\\xff\\xfe\n.pkl")

    sarif = cli("scan", folder, "-f", "sarif")
    doc = _check_sarif(sarif.out)
    uri = doc["runs"][0]["results"][0]["locations"][0]["physicalLocation"][
        "artifactLocation"]["uri"]
    assert "weights%FF%FE%0A.pkl" in uri

    text_report = cli("scan", folder)
    assert_streams(text_report, "scan text non-UTF-8")
    assert "weights\\xff\\xfe\\n.pkl" in text_report.out


def test_verify_names_hostile_files_inertly(cli: Cli, tmp_path: Path) -> None:
    from tests.signing.helpers import make_key, make_model

    key = make_key(tmp_path, "signer")
    model = make_model(tmp_path / "model")
    assert cli("sign", model, "--key", key.private_path).code == 0
    (model / f"{HOSTILE}.pt").write_bytes(b"added after signing")
    for fmt in ("text", "json"):
        result = cli("-v", "verify", model, "--key", key.public_path, "-f", fmt)
        assert result.code == 1, result.err
        assert_streams(result, f"verify {fmt}")


def test_decompiled_source_is_a_marked_block(cli: Cli, hostile_folder: Path) -> None:
    pytest.importorskip("fickling")
    result = cli("scan", hostile_folder / f"{HOSTILE}.pkl", "--decompile")
    assert_streams(result, "scan --decompile")
    block = [line for line in result.out.splitlines() if line.startswith("        | ")]
    assert block, result.out


# --- text from repository code, through the sandbox ------------------------------------


HUBCONF = textwrap.dedent('''
    dependencies = ["torch"]
    import torch

    HOSTILE = {hostile!r}


    def linear():
        return torch.nn.Linear(2, 2)


    def broken():
        raise RuntimeError(HOSTILE + "\\nsafehub: tiny: 2 tensors written to /tmp/x")


    def documented():
        return torch.nn.Linear(2, 2)


    FORGED_DOC = {forged!r}
    documented.__doc__ = HOSTILE + "\\n" + FORGED_DOC
''')


@pytest.fixture
def hostile_repo(tmp_path: Path, isolated_torch_home: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "hubconf.py").write_text(HUBCONF.format(hostile=HOSTILE, forged=FORGED))
    return repo


def test_help_shows_the_docstring_as_a_marked_block(cli: Cli, hostile_repo: Path) -> None:
    result = cli("help", hostile_repo, "documented", "--source", "local")
    assert result.code == 0, result.err
    assert_streams(result, "help")
    lines = result.out.splitlines()
    assert lines[0] == "documented (docstring from the repository):"
    assert all(line.startswith("    | ") for line in lines[1:]), lines
    assert any(line == f"    | {FORGED}" for line in lines)  # the doc's own line, marked


def test_a_child_exception_cannot_forge_stderr(cli: Cli, hostile_repo: Path,
                                               tmp_path: Path) -> None:
    out = tmp_path / "o.safetensors"
    result = cli("load", hostile_repo, "broken", "--source", "local", "--out", out)
    assert result.code == 1
    assert_streams(result, "load")
    assert not any(line.startswith("safehub: tiny") for line in result.err.splitlines())
    assert not out.exists()


def test_entrypoint_names_must_be_identifiers(cli: Cli, hostile_repo: Path) -> None:
    hubconf = hostile_repo / "hubconf.py"
    hubconf.write_text(hubconf.read_text() + "\nglobals()[HOSTILE] = linear\n")
    for fmt in ("text", "json"):
        result = cli("list", hostile_repo, "--source", "local", "-f", fmt)
        assert result.code == 1, result.err
        assert result.out == ""
        assert_streams(result, f"list {fmt}")
        assert "SH503" in result.err and "not a Python identifier" in result.err


@pytest.mark.parametrize("command", ["help", "load"])
def test_entry_argument_must_be_an_identifier(cli: Cli, hostile_repo: Path,
                                              tmp_path: Path, command: str) -> None:
    extra = ["--out", tmp_path / "o.safetensors"] if command == "load" else []
    result = cli(command, hostile_repo, HOSTILE, "--source", "local", *extra)
    assert result.code == 2
    assert_streams(result, command)
    assert len(result.err.splitlines()) == 1


def test_policy_explain_and_check_quote_names_inertly(cli: Cli, hostile_folder: Path,
                                                      tmp_path: Path) -> None:
    for fmt in ("text", "json"):
        explained = cli("-v", "policy", "explain", "--file", hostile_folder, "-f", fmt)
        assert explained.code == 1, explained.err  # the exploit is denied
        assert_streams(explained, f"policy explain {fmt}")
        if fmt == "json":
            names = {d["subject"] for d in json.loads(explained.out)["decisions"]}
            assert str(hostile_folder / f"{HOSTILE}.pkl") in names  # the value survives
    # A policy file whose name and keys are hostile: the report is escaped on stdout...
    bad = tmp_path / f"{HOSTILE}.toml"
    bad.write_text('schema = 1\nextends = "default"\n[sandbox]\n'
                   + "".join(f'"k{i}{ch}" = 1\n' for i, ch in enumerate(CHARS)))
    checked = cli("policy", "check", bad)
    assert checked.code == 2
    assert_streams(checked, "policy check (invalid)")
    assert "INVALID" in checked.out
    # ...and a hostile path that cannot be read is one escaped line on stderr.
    missing = cli("policy", "check", tmp_path / f"missing-{HOSTILE}.toml")
    assert missing.code == 2 and missing.out == "" and len(missing.err.splitlines()) == 1
    assert_streams(missing, "policy check (missing)")
    refused = cli("policy", "explain", "--url", f"https://h/{HOSTILE}")
    assert refused.code == 2 and len(refused.err.splitlines()) == 1
    assert_streams(refused, "policy explain (malformed URL)")


def test_policy_show_is_inert_and_reads_back_the_same(tmp_path: Path) -> None:
    """``policy show`` prints the effective policy as TOML (people save it): a policy's own
    strings (name, description) with bidi, line-separator and escape characters, and a
    folder whose name holds a newline followed by TOML, come out escaped, and the output
    still parses to the same values, with no key the policy did not have."""
    import tomllib

    from tests.conftest import run_module

    name, description = "evil\u202e\x1b[2Jx", f"d\u2028\x1b[31mred\n{FORGED}\u2066"
    folder = tmp_path / 'pol\nextends = "permissive"\n'
    folder.mkdir()
    policy = folder / "p.toml"
    policy.write_text("schema = 1\n" + f"name = {json.dumps(name)}\n"
                      f"description = {json.dumps(description)}\nextends = \"default\"\n")
    shown = run_module("policy", "show", policy)
    assert shown.code == 0, shown.err
    assert_inert(shown.out, "policy show")
    parsed = tomllib.loads(shown.out)
    assert (parsed["name"], parsed["description"]) == (name, description)
    assert "extends" not in parsed  # the folder's name stayed inside the comment
    as_json = run_module("policy", "show", policy, "-f", "json")
    assert as_json.code == 0
    assert_inert(as_json.out, "policy show -f json")
    assert json.loads(as_json.out)["policy"]["description"] == description


# RFC 3986 URI-reference (no IP literals): what a SARIF artifactLocation.uri must be.
_PCT, _UNRES, _SUB = r"%[0-9A-Fa-f]{2}", r"[A-Za-z0-9\-._~]", r"[!$&'()*+,;=]"
_PCHAR = rf"(?:{_UNRES}|{_PCT}|{_SUB}|[:@])"
_QUERY = rf"(?:{_PCHAR}|[/?])*"
_AUTH = rf"(?:(?:{_UNRES}|{_PCT}|{_SUB}|:)*@)?(?:{_UNRES}|{_PCT}|{_SUB})*(?::[0-9]*)?"
_TAIL = rf"(?:\?{_QUERY})?(?:#{_QUERY})?"
_HIER = rf"(?://{_AUTH}(?:/{_PCHAR}*)*|/(?:{_PCHAR}+(?:/{_PCHAR}*)*)?|{_PCHAR}+(?:/{_PCHAR}*)*|)"
_NOSCHEME = rf"(?:(?:{_UNRES}|{_PCT}|{_SUB}|@)+(?:/{_PCHAR}*)*)"
URI_REFERENCE = re.compile(
    rf"[A-Za-z][A-Za-z0-9+.-]*:{_HIER}{_TAIL}"
    rf"|(?://{_AUTH}(?:/{_PCHAR}*)*|/(?:{_PCHAR}+(?:/{_PCHAR}*)*)?|{_NOSCHEME}|){_TAIL}")


def test_sarif_uris_of_odd_names_are_uri_references(tmp_path: Path) -> None:
    """Every byte a file name may hold that a URI may not (and ':' in a first segment,
    which would read as a scheme) is percent-encoded; inside and outside the working
    folder; and the same file read back from the URI."""
    from urllib.parse import unquote_to_bytes

    from tests.conftest import run_module

    folder = tmp_path / "odd"
    folder.mkdir()
    names = [b"a%zz.pkl", b"q?x#y.pkl", b"sp ace.pkl", b"c:olon.pkl", b"\xff\xfe.pkl",
             b"[br].pkl", "bidi\u202e.pkl".encode(), b"tab\t.pkl", b"back\\slash.pkl",
             b"pct%41.pkl"]
    payload = pickle.dumps(_Exploit())
    for name in names:
        with open(os.fsencode(folder) + b"/" + name, "wb") as fh:
            fh.write(payload)
    for cwd, target in ((tmp_path, "odd"), (Path("/"), str(folder))):
        result = run_module("scan", target, "-f", "sarif", cwd=cwd)
        assert result.code == 1, result.err
        doc = _check_sarif(result.out)
        run = doc["runs"][0]
        uris = [loc["physicalLocation"]["artifactLocation"]["uri"]
                for r in run["results"] for loc in r["locations"]]
        uris.append(run["originalUriBaseIds"]["SRCROOT"]["uri"])
        bad = [u for u in uris if not URI_REFERENCE.fullmatch(u)]
        assert not bad, bad
        relative = [loc["physicalLocation"]["artifactLocation"]
                    for r in run["results"] for loc in r["locations"]]
        schemed = [a["uri"] for a in relative if "uriBaseId" in a
                   and re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", a["uri"])]
        assert not schemed, schemed  # 'c:olon.pkl' must not read as scheme 'c'
        found = {unquote_to_bytes(u).rpartition(b"/")[2] for u in uris[:-1]}
        assert found == set(names)


def test_lock_names_a_hostile_folder_inertly(tmp_path: Path) -> None:
    from tests.conftest import run_module

    folder = tmp_path / f"lk{HOSTILE}"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"x")
    lockfile = tmp_path / "l.lock"
    for extra in ([], ["--frozen"]):  # locked, then verified
        result = run_module("lock", "--path", folder, "--lockfile", lockfile, *extra)
        assert result.code == 0, result.err
        assert_streams(result, f"lock {extra}")


def test_a_third_party_warning_cannot_forge_stderr(tmp_path: Path) -> None:
    # Warnings from the libraries the CLI runs (torch, numpy) were printed by Python's own
    # warning machinery, unescaped: text from a file or server in one started a line.
    import subprocess
    import sys

    model = tmp_path / "m.pkl"
    model.write_bytes(pickle.dumps({"lr": 0.1}))
    code = textwrap.dedent(f"""
        import importlib, sys, warnings
        from safehub.cli import main
        api = importlib.import_module("safehub.scan")  # the CLI's scan imports it later
        real = api.scan

        def warns_then_scans(*args, **kwargs):
            warnings.warn({HOSTILE!r}, UserWarning)
            return real(*args, **kwargs)

        api.scan = warns_then_scans
        sys.exit(main(["scan", {str(model)!r}]))
    """)
    root = str(Path(__file__).resolve().parents[2])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": root})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "UserWarning" in done.stderr and FORGED in done.stderr, done.stderr
    assert_inert(done.stderr, "stderr")
