"""``safehub audit`` as users and CI run it: exit codes, streams, formats, default locations."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from safehub.audit import audit, default_roots, hf_hub_cache
from tests.audit._caches import Caches, build_hf_repo, clean_checkpoint
from tests.conftest import CliResult, run_module

Cli = Callable[..., CliResult]


def _args(c: Caches) -> list[str]:
    return ["audit", str(c.hub), str(c.hf), "--policy", str(c.policy), "--lockfile",
            str(c.lockfile), "--no-state"]


def test_findings_exit_1_with_report_on_stdout_and_summary_on_stderr(cli: Cli,
                                                                      built: Caches) -> None:
    result = cli(*_args(built))
    assert result.code == 1
    assert "UNSAFE" in result.out and str(built.paths["th-evil"]) in result.out
    assert "SH400" in result.out and "SH204" in result.out
    assert "files:" in result.err and "unsafe" in result.err
    assert "files:" not in result.out


def test_json_report_carries_provenance_and_the_scan_schema(cli: Cli, built: Caches) -> None:
    result = cli(*_args(built), "-f", "json")
    assert result.code == 1
    body = json.loads(result.out)
    assert body["schema_version"] == "1" and body["command"] == "audit"
    assert body["summary"]["unsafe"] >= 7
    audit_part = body["audit"]
    assert audit_part["schema_version"] == "1"
    assert {c["layout"] for c in audit_part["caches"]} >= {"torch-hub", "huggingface",
                                                           "safehub-cache"}
    snap = str(built.paths["hf-clean"])
    assert audit_part["folders"][snap] == "huggingface snapshot"
    assert audit_part["provenance"][snap]["repo"] == "plain/clean"
    by_path = {f["path"]: f for f in body["files"]}
    evil = by_path[str(built.paths["th-evil"])]
    assert evil["verdict"] == "unsafe"
    assert all(len(f["fingerprint"]) == 32 for f in evil["findings"])


def test_sarif_is_valid_and_carries_provenance(cli: Cli, built: Caches, shared_dir: Path,
                                               tmp_path: Path) -> None:
    import jsonschema

    out = tmp_path / "audit.sarif"
    result = cli(*_args(built), "-f", "sarif", "-o", str(out))
    assert result.code == 1 and result.out == ""
    doc = json.loads(out.read_text())
    schema = json.loads((shared_dir / "schemas" / "sarif-schema-2.1.0.json").read_text())
    jsonschema.validate(doc, schema)
    results = doc["runs"][0]["results"]
    assert {r["ruleId"] for r in results} >= {"SH100", "SH201", "SH204", "SH300", "SH400"}
    assert all("safehubFinding/v1" in r["partialFingerprints"] for r in results)
    hf = [r for r in results if r["properties"].get("provenance", {}).get("source") ==
          "huggingface"]
    assert hf and all("revision" in r["properties"]["provenance"] for r in hf)


def test_clean_folder_exits_0_and_nothing_exits_2(cli: Cli, tmp_path: Path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "w.pth").write_bytes(clean_checkpoint(1))
    assert cli("audit", str(folder), "--no-state").code == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli("audit", str(empty), "--no-state")
    assert result.code == 2 and "nothing to audit" in result.err
    missing = cli("audit", str(tmp_path / "missing"), "--no-state")
    assert missing.code == 2


def test_python_m_safehub_audit(tmp_path: Path, built: Caches) -> None:
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state"), "NO_COLOR": "1"}
    env.pop("SAFEHUB_POLICY", None)
    result = run_module(*_args(built), "-q", env=env, cwd=tmp_path)
    assert result.code == 1
    assert result.out == ""  # -q: no text report
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "w.pth").write_bytes(clean_checkpoint(2))
    ok = run_module("audit", str(clean), env=env, cwd=tmp_path)
    assert ok.code == 0, ok.err
    assert "1 files: 1 clean" in ok.err


def test_default_locations_follow_torch_and_huggingface_rules(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, built: Caches) -> None:
    monkeypatch.setenv("TORCH_HOME", str(built.hub.parent))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    assert hf_hub_cache() == str(tmp_path / "hf-home" / "hub")
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", str(tmp_path / "legacy"))
    assert hf_hub_cache() == str(tmp_path / "legacy")
    monkeypatch.setenv("HF_HUB_CACHE", str(built.hf))
    assert default_roots() == [str(built.hub), str(built.hf)]
    result = audit(policy=built.policy, lockfile=built.lockfile, incremental=False)
    layouts = {layout for layout, _ in result.caches}
    assert layouts == {"torch-hub", "safehub-cache", "huggingface"}
    assert str(built.paths["hf-evil"] / "pytorch_model.bin") in {f.path for f in result.unsafe}
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE")
    monkeypatch.delenv("HF_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hf_hub_cache() == str(tmp_path / "xdg" / "huggingface" / "hub")


def test_missing_default_caches_are_skipped_not_errors(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path, cli: Cli) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    build_hf_repo(tmp_path / "hf", "org/model", {"model.pt": clean_checkpoint(3)})
    result = cli("audit", "--no-state", "-v")
    assert result.code == 0, result.err
    assert "no cache here" in result.out
