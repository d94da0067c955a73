"""``safehub policy show|check|explain|schema`` through the real CLI, with golden outputs."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import CliResult, run_module

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("SAFEHUB_REGEN_GOLDEN") == "1"

Cli = Callable[..., CliResult]


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text)
    assert path.is_file(), f"missing golden file {path} (run with SAFEHUB_REGEN_GOLDEN=1)"
    assert text == path.read_text()


@pytest.fixture(autouse=True)
def _no_ambient_policy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SAFEHUB_POLICY", raising=False)
    monkeypatch.delenv("SAFEHUB_OFFLINE", raising=False)
    monkeypatch.chdir(tmp_path)


def test_explain_denied_repo_golden(cli: Cli) -> None:
    result = cli("policy", "explain", "someone/model:main", "--entrypoint", "net",
                 "--url", "https://download.pytorch.org/models/net.pth",
                 "--url", "http://example.com/net.pth")
    assert result.code == 1
    check_golden("explain_default_denied.txt", result.out)


def test_explain_strict_golden(cli: Cli) -> None:
    result = cli("policy", "explain", "pytorch/vision:v0.20.0", "--policy", "strict",
                 "--url", "https://download.pytorch.org/models/resnet18-f37072fd.pth")
    assert result.code == 1
    check_golden("explain_strict.txt", result.out)


def test_explain_user_policy_golden(cli: Cli, tmp_path: Path) -> None:
    policy = tmp_path / "acme.toml"
    policy.write_text('schema = 1\nname = "acme"\nextends = "strict"\n'
                      'loosen = [\'repos."acme/detector"\']\n'
                      '[repos."acme/detector"]\n'
                      'commit = "0123456789abcdef0123456789abcdef01234567"\n'
                      'entrypoints = ["detector"]\n[downloads.pins]\n'
                      '"https://download.pytorch.org/models/det.pth" = "' + "ab" * 32 + '"\n')
    result = cli("policy", "explain", "acme/detector:main", "--entrypoint", "detector",
                 "--url", "https://download.pytorch.org/models/det.pth",
                 "--policy", str(policy))
    assert result.code == 0, result.out + result.err
    check_golden("explain_user_policy.txt", result.out.replace(str(tmp_path), "<TMP>"))


def test_explain_url_shows_a_file_name_pin(cli: Cli, tmp_path: Path) -> None:
    """A pin keyed by the URL's file name is a requirement of the URL itself."""
    policy = tmp_path / "pins.toml"
    policy.write_text('schema = 1\nname = "pins"\nextends = "default"\n[downloads.pins]\n'
                      '"net.pth" = "' + "ab" * 32 + '"\n')
    result = cli("policy", "explain", "--url", "https://download.pytorch.org/models/net.pth",
                 "--policy", str(policy))
    assert result.code == 0, result.out + result.err
    assert f"requires sha256: {'ab' * 32} (downloads.pins.net.pth)" in result.out
    assert "(the URL's file name)" in result.out



def test_a_pin_that_can_match_no_download_makes_the_policy_invalid(cli: Cli,
                                                                   tmp_path: Path) -> None:
    """A pin key copied with a trailing space (or a user@ part) matched no download: the
    file it was meant for was downloaded unpinned while `policy check` said all was well."""
    url = "https://download.pytorch.org/models/net.pth"
    policy = tmp_path / "pins.toml"
    policy.write_text('schema = 1\nname = "pins"\nextends = "default"\n[downloads.pins]\n'
                      f'"{url} " = "' + "ab" * 32 + '"\n')
    result = cli("policy", "check", str(policy))
    assert result.code == 2, result.out + result.err
    assert "pin nothing" in result.out + result.err
    result = cli("policy", "explain", "--url", url, "--policy", str(policy))
    assert result.code == 2, result.out + result.err

def test_explain_json(cli: Cli) -> None:
    result = cli("policy", "explain", "pytorch/vision", "-f", "json")
    assert result.code == 0
    data = json.loads(result.out)
    assert data["schema_version"] == "1"
    assert data["decisions"][0]["allowed"] is True
    assert data["decisions"][0]["trail"][0]["rule"].startswith("trust.owners")


def test_explain_file_under_policy(cli: Cli, shared_dir: Path, tmp_path: Path) -> None:
    sample = shared_dir / "corpus" / "benign" / "b_argparse_namespace.pt"
    # argparse.Namespace is a harmless data class: it blocks only under an info threshold.
    assert cli("policy", "explain", "--file", str(sample)).code == 0
    assert cli("policy", "explain", "--file", str(sample), "--policy", "strict").code == 1
    policy = tmp_path / "fairseq.toml"
    policy.write_text('schema = 1\nextends = "default"\nloosen = ["scanner.allowed_globals"]\n'
                      '[scanner]\nblock_severity = "info"\n'
                      'allowed_globals = ["argparse.Namespace"]\n')
    result = cli("policy", "explain", "--file", str(sample), "--policy", str(policy))
    assert result.code == 0, result.out


def test_explain_needs_a_request(cli: Cli) -> None:
    result = cli("policy", "explain")
    assert result.code == 2
    assert "nothing to explain" in result.err


def test_show_effective_policy(cli: Cli, tmp_path: Path) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text('schema = 1\nextends = "default"\nloosen = ["trust.owners"]\n'
                      '[trust]\nowners = ["acme"]\n')
    result = cli("policy", "show", str(policy))
    assert result.code == 0
    assert '"acme"' in result.out and '"pytorch"' in result.out
    assert "preset:default" in result.out.splitlines()[0]
    as_json = json.loads(cli("policy", "show", "strict", "-f", "json").out)
    assert as_json["policy"]["trust"]["require_commit_pin"] is True


def test_check_reports_every_issue_and_exits_2(cli: Cli, tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('schema = 1\nextends = "default"\n')
    bad = tmp_path / "bad.toml"
    bad.write_text('schema = 1\nextends = "default"\ncolour = 1\n[sandbox]\ntimeout_s = -1\n')
    assert cli("policy", "check", str(good)).code == 0
    result = cli("policy", "check", str(good), str(bad))
    assert result.code == 2
    assert f"{bad}:3: colour: unknown key" in result.out
    assert f"{bad}:5: sandbox.timeout_s:" in result.out
    assert cli("policy", "check", str(tmp_path / "absent.toml")).code == 2


def test_schema_is_json_schema(cli: Cli) -> None:
    result = cli("policy", "schema")
    schema = json.loads(result.out)
    assert schema["title"] == "safehub policy"
    assert "trust" in schema["properties"] and "schema" in schema["required"]


def test_invalid_policy_is_exit_2_for_every_command(cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("schema = 1\nbogus = true\n")
    result = cli("policy", "explain", "pytorch/vision", "--policy", str(bad))
    assert result.code == 2
    assert "bogus: unknown key" in result.err


def test_scan_uses_the_policy(cli: Cli, shared_dir: Path, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    sample = shared_dir / "corpus" / "benign" / "b_joblib_numeric.joblib"
    # joblib's array record is a harmless data class: it passes by default and blocks
    # under a policy that blocks informational findings, until that policy allows it.
    assert cli("scan", str(sample)).code == 0
    assert cli("scan", str(sample), "--policy", "strict").code == 1
    policy = tmp_path / "joblib.toml"
    policy.write_text('schema = 1\nextends = "default"\nloosen = ["scanner.allowed_globals"]\n'
                      '[scanner]\nblock_severity = "info"\n'
                      'allowed_globals = ["joblib.numpy_pickle.NumpyArrayWrapper"]\n')
    assert cli("scan", str(sample), "--policy", str(policy)).code == 0
    monkeypatch.setenv("SAFEHUB_POLICY", str(policy))
    refused = cli("scan", str(sample))
    assert refused.code == 2, "an implicit policy may not loosen the default"
    assert "SAFEHUB_POLICY" in refused.err and "scanner.allowed_globals" in refused.err
    assert cli("scan", str(sample), "--policy", "strict").code == 1


def test_policy_cli_in_a_real_process(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SAFEHUB_POLICY"}
    result = run_module("policy", "explain", "nobody/thing", env=env, cwd=tmp_path)
    assert result.code == 1
    assert result.out.startswith("policy: default")
    assert result.err == ""


def test_a_childs_wildcard_denial_wins_over_its_parents_exact_rule(cli: Cli,
                                                                   tmp_path: Path) -> None:
    """A child policy may only tighten: its ``[repos."acme/*"] allow = false`` must deny the
    ``acme/det`` its parent lists by exact key (before, the parent's more specific rule
    decided and the repo stayed allowed while `policy check` passed). Within one file the
    most specific rule still decides (the child's own exception)."""
    parent = tmp_path / "parent.toml"
    parent.write_text('schema = 1\nextends = "default"\nloosen = ["repos"]\n'
                      '[repos."acme/det"]\nentrypoints = ["m"]\n')
    child = tmp_path / "child.toml"
    child.write_text('schema = 1\nextends = "parent.toml"\n[repos."acme/*"]\nallow = false\n')
    assert cli("policy", "check", str(child)).code == 0
    result = cli("policy", "explain", "acme/det", "--entrypoint", "m", "--policy", str(child))
    assert result.code == 1, result.out + result.err
    assert "repo rule 'acme/*' denies it" in result.out
    assert cli("policy", "explain", "acme/det", "--entrypoint", "m",
               "--policy", str(parent)).code == 0
    excepted = tmp_path / "excepted.toml"
    excepted.write_text('schema = 1\nextends = "parent.toml"\n[repos."acme/*"]\nallow = false\n'
                        '[repos."acme/det"]\nentrypoints = ["m"]\n')
    assert cli("policy", "explain", "acme/det", "--entrypoint", "m",
               "--policy", str(excepted)).code == 0
    assert cli("policy", "explain", "acme/other", "--policy", str(excepted)).code == 1
