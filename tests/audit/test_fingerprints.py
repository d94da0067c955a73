"""Stable SARIF fingerprints: code scanning must not see findings churn between CI runs."""

from __future__ import annotations

import io
import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path

from tests.conftest import CliResult

Cli = Callable[..., CliResult]


class _Payload:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (self.command,)


def _evil(padding: int) -> bytes:
    """The same payload after ``padding`` bytes of harmless data: it moves, it is the same."""
    buf = io.BytesIO()
    pickle.dump({"pad": b"x" * padding, "hook": _Payload("true")}, buf, protocol=4)
    return buf.getvalue()


def _fingerprints(cli: Cli, *args: str) -> dict[tuple[str, str], str]:
    result = cli(*args, "-f", "sarif")
    assert result.code == 1, result.err
    doc = json.loads(result.out)
    out = {}
    for r in doc["runs"][0]["results"]:
        uri = r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
        out[(r["ruleId"], uri)] = r["partialFingerprints"]["safehubFinding/v1"]
    return out


def test_fingerprints_survive_reruns_moved_bytes_and_new_files(cli: Cli,
                                                               tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "models").mkdir(parents=True)
    target = repo / "models" / "model.pkl"
    target.write_bytes(_evil(10))
    os.chdir(repo)  # SARIF paths are relative to the checkout, as in CI
    for command in (["scan", "models"], ["audit", "models", "--no-state"]):
        first = _fingerprints(cli, *command)
        assert first and len(set(first.values())) == len(first)
        assert _fingerprints(cli, *command) == first
        # The payload moves by thousands of bytes: same finding, same fingerprint.
        offsets_before = target.read_bytes().find(b"system")
        target.write_bytes(_evil(5000))
        assert target.read_bytes().find(b"system") > offsets_before + 4000
        assert _fingerprints(cli, *command) == first
        # Another file appears beside it: existing findings keep their fingerprints.
        (repo / "models" / "other.pkl").write_bytes(_evil(3))
        moved = _fingerprints(cli, *command)
        assert {k: v for k, v in moved.items() if k in first} == first
        assert len(moved) > len(first)
        (repo / "models" / "other.pkl").unlink()
        target.write_bytes(_evil(10))


def test_fingerprints_name_the_file_and_rule(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "a.pkl").write_bytes(_evil(1))
    (tmp_path / "b.pkl").write_bytes(_evil(1))
    os.chdir(tmp_path)
    prints = _fingerprints(cli, "audit", "a.pkl", "b.pkl", "--no-state")
    by_file = {uri: fp for (rule, uri), fp in prints.items() if rule == "SH100"}
    assert by_file["a.pkl"] != by_file["b.pkl"]  # same content, different files
