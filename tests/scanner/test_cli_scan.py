"""``safehub scan``: exit codes, streams, formats, folders, allowances.

Exit codes: 0 every file clean, 1 anything unsafe, 2 unreadable or unknown input, nothing
scanned, or bad arguments. stdout carries the report alone; the summary and logs go to
stderr.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import CliResult, run_module
from tests.scanner import _builders as B

Cli = Callable[..., CliResult]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    d = tmp_path / "in"
    d.mkdir()
    return {
        "clean": Path(B.write(d / "clean.pkl", pickle.dumps({"lr": 0.1, "epochs": [1, 2]}, 2))),
        "evil": Path(B.write(d / "evil.pkl", B.os_system_p0("never"))),
        "unknown": Path(B.write(d / "model.pt", b"this is not a model file at all\n")),
    }


def test_clean_file_exits_0_with_report_on_stdout(cli: Cli, files: dict[str, Path]) -> None:
    r = cli("scan", files["clean"])
    assert r.code == 0
    assert r.out.startswith("CLEAN")
    assert "1 files: 1 clean, 0 unsafe, 0 not scanned" in r.err
    assert "files:" not in r.out


def test_unsafe_file_exits_1(cli: Cli, files: dict[str, Path]) -> None:
    r = cli("scan", files["evil"])
    assert r.code == 1
    assert "UNSAFE" in r.out and "SH100" in r.out and "posix.system" in r.out
    assert "would run: posix.system('touch never')" in r.out
    assert "1 unsafe" in r.err


def test_unknown_format_exits_2(cli: Cli, files: dict[str, Path]) -> None:
    r = cli("scan", files["unknown"])
    assert r.code == 2
    assert "UNKNOWN" in r.out and "SH190" in r.out
    assert "not scanned" in r.err


def test_unsafe_wins_over_unknown(cli: Cli, files: dict[str, Path]) -> None:
    assert cli("scan", files["unknown"], files["evil"]).code == 1


def test_missing_file_exits_2(cli: Cli, tmp_path: Path) -> None:
    r = cli("scan", tmp_path / "nope.pt")
    assert r.code == 2
    assert "SH193" in r.out and "not scanned" in r.err


def test_empty_folder_is_nothing_scanned(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert cli("scan", tmp_path / "empty").code == 2


def test_bad_arguments_exit_2(cli: Cli) -> None:
    assert cli("scan").code == 2
    assert cli("scan", "--format", "xml", "x").code == 2


def test_json_report(cli: Cli, files: dict[str, Path]) -> None:
    r = cli("scan", "-f", "json", files["clean"], files["evil"])
    assert r.code == 1
    doc = json.loads(r.out)
    assert doc["schema_version"] == "1"
    assert doc["summary"] == {"files": 2, "clean": 1, "unsafe": 1, "unknown": 0, "errors": 0,
                              "skipped": 0}
    evil = next(f for f in doc["files"] if f["path"].endswith("evil.pkl"))
    finding = next(x for x in evil["findings"] if x["rule_id"] == "SH100")
    assert finding["subject"] == "posix.system" and finding["blocking"] is True
    assert finding["offset"] == 0 and len(finding["fingerprint"]) == 32


def test_sarif_report_validates(cli: Cli, files: dict[str, Path], shared_dir: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((shared_dir / "schemas" / "sarif-schema-2.1.0.json").read_text())
    monkeypatch.chdir(files["clean"].parent)
    r = cli("scan", "-f", "sarif", ".")
    assert r.code == 1  # evil.pkl (model.pt is unknown, clean.pkl clean)
    doc = json.loads(r.out)
    jsonschema.validate(doc, schema)
    results = doc["runs"][0]["results"]
    uris = {res["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for res in results}
    assert uris == {"evil.pkl", "model.pt"}  # relative to the working directory
    assert all(res["locations"][0]["physicalLocation"]["region"]["startLine"] == 1
               for res in results)


def test_output_file(cli: Cli, files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    r = cli("scan", "-f", "json", "-o", out, files["evil"])
    assert r.code == 1
    assert r.out == ""
    assert json.loads(out.read_text())["summary"]["unsafe"] == 1
    assert "report written" in r.err


def test_quiet(cli: Cli, files: dict[str, Path]) -> None:
    r = cli("-q", "scan", files["evil"])  # no report; the unsafe file named, one line
    assert r.code == 1 and r.out == ""
    assert r.err.splitlines() == [f"safehub: {files['evil']}: UNSAFE: " + r.err.split(
        ": UNSAFE: ", 1)[1].rstrip("\n")]
    r = cli("scan", files["clean"], "-q")
    assert r.code == 0 and r.out == "" and r.err == ""


def test_verbose_lists_skipped_and_records(cli: Cli, files: dict[str, Path]) -> None:
    (files["clean"].parent / "notes.txt").write_text("hello\n")
    r = cli("-v", "scan", files["clean"].parent)
    assert "SKIPPED" in r.out and "notes.txt: not a model format" in r.out


def test_folders_are_walked_recursively(cli: Cli, tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    B.write(deep / "w.pkl", B.os_system_p0("x"))
    B.write(tmp_path / "a" / "ok.pkl", pickle.dumps([1], 4))
    (tmp_path / "a" / "README.md").write_text("# model\n")
    r = cli("scan", "-f", "json", tmp_path / "a")
    doc = json.loads(r.out)
    assert r.code == 1
    assert sorted(Path(f["path"]).name for f in doc["files"]) == ["ok.pkl", "w.pkl"]
    assert [(Path(s["path"]).name, s["reason"]) for s in doc["skipped"]] == [
        ("README.md", "not a model format")]


def test_symlinks_in_folders(cli: Cli, tmp_path: Path) -> None:
    """A link to a file is what a loader opening the link reads: its target is scanned under
    the link's name. A link to a directory outside the scanned folder is not followed and
    is reported not scanned."""
    outside = tmp_path / "outside"
    outside.mkdir()
    B.write(outside / "evil.pkl", B.os_system_p0("x"))
    folder = tmp_path / "models"
    folder.mkdir()
    B.write(folder / "ok.pkl", pickle.dumps([1], 2))
    os.symlink(outside / "evil.pkl", folder / "link.pkl")
    os.symlink(outside, folder / "linkdir")
    r = cli("scan", "-f", "json", folder)
    doc = json.loads(r.out)
    assert r.code == 1
    verdicts = {Path(f["path"]).name: f["verdict"] for f in doc["files"]}
    assert verdicts == {"ok.pkl": "clean", "link.pkl": "unsafe", "linkdir": "error"}
    assert doc["skipped"] == []


def test_dangling_symlink_in_folder_is_not_scanned(cli: Cli, tmp_path: Path) -> None:
    B.write(tmp_path / "ok.pkl", pickle.dumps([1], 2))
    os.symlink(tmp_path / "gone.bin", tmp_path / "pytorch_model.bin")
    r = cli("scan", "-f", "json", tmp_path)
    assert r.code == 2
    doc = json.loads(r.out)
    assert {Path(f["path"]).name: f["verdict"] for f in doc["files"]} == {
        "ok.pkl": "clean", "pytorch_model.bin": "error"}


def test_named_symlink_is_scanned_as_given(cli: Cli, tmp_path: Path) -> None:
    B.write(tmp_path / "evil.pkl", B.os_system_p0("x"))
    os.symlink(tmp_path / "evil.pkl", tmp_path / "alias.pt")
    assert cli("scan", tmp_path / "alias.pt").code == 1


def _namespace_checkpoint(path: Path) -> Path:
    import argparse

    import torch

    torch.save({"args": argparse.Namespace(lr=0.1), "w": torch.ones(2)}, path)
    return path


def test_allow_global(cli: Cli, tmp_path: Path) -> None:
    ckpt = _namespace_checkpoint(tmp_path / "fairseq.pt")
    assert cli("scan", ckpt).code == 0  # a harmless data class: informational by default
    assert cli("scan", "--policy", "strict", ckpt).code == 1
    r = cli("-v", "scan", "--policy", "strict", "--allow-global", "argparse.Namespace", ckpt)
    assert r.code == 0
    assert "allowed by: policy and command line" in r.out
    # A wildcard must name a module below the top level.
    assert cli("scan", "--allow-global", "argparse.*", ckpt).code == 2


@pytest.mark.parametrize("name", ["os.system", "posix.system", "builtins.eval", "builtins.*",
                                  "subprocess.*", "torch.hub.load", "pickle.loads"])
def test_critical_names_cannot_be_allowed(cli: Cli, files: dict[str, Path], name: str) -> None:
    r = cli("scan", "--allow-global", name, files["evil"])
    assert r.code == 2
    assert "can never be allowed" in r.err
    assert r.out == ""


@pytest.mark.parametrize("name", ["", "*", " os.path", "os..path", "torch.*.x", "a-b.c"])
def test_entries_that_name_no_global_are_refused(cli: Cli, files: dict[str, Path],
                                                 name: str) -> None:
    # They match nothing: accepted, they silently allowed nothing (the policy file refused
    # them; the command line did not).
    r = cli("scan", "--allow-global", name, files["evil"])
    assert r.code == 2
    assert "is not a dotted Python name" in r.err
    assert r.out == ""


def test_allowing_a_name_does_not_allow_a_dangerous_file(cli: Cli, files: dict[str, Path]
                                                         ) -> None:
    assert cli("scan", "--allow-global", "argparse.Namespace", files["evil"]).code == 1


def test_python_m_safehub_exit_codes_and_streams(files: dict[str, Path]) -> None:
    env = {**os.environ, "NO_COLOR": "1"}
    clean = run_module("scan", files["clean"], env=env)
    assert (clean.code, clean.out.split()[0]) == (0, "CLEAN")
    assert "1 clean" in clean.err
    evil = run_module("scan", "-f", "json", files["evil"], env=env)
    assert evil.code == 1
    assert json.loads(evil.out)["summary"]["unsafe"] == 1  # stdout is the report alone
    assert "1 unsafe" in evil.err
    bad = run_module("scan", env=env)
    assert bad.code == 2 and bad.out == "" and "usage" in bad.err
