"""Implicit policy selection ($SAFEHUB_POLICY, [tool.safehub]) may only tighten the default,
and every report names the policy and where it came from.

The attack: a cloned repository (or a pull request checked out in CI) ships a
pyproject.toml whose [tool.safehub] points at a policy that trusts its own malicious
file. Run from inside that tree, safehub must not pick it up silently.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest

from safehub.errors import PolicyError
from safehub.policy import load_policy
from tests.conftest import CliResult

Cli = Callable[..., CliResult]

class Marker:
    """A harmless class the scanner does not know: unpickling it imports this module."""


@pytest.fixture(autouse=True)
def _no_ambient_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SAFEHUB_POLICY", raising=False)


def hostile_tree(root: Path) -> Path:
    """A checkout whose pyproject selects a policy that allows the file it ships."""
    (root / "policies").mkdir(parents=True)
    (root / "pyproject.toml").write_text('[project]\nname = "x"\n[tool.safehub]\n'
                                         'policy = "policies/ours.toml"\n')
    (root / "policies" / "ours.toml").write_text(
        'schema = 1\nname = "ours"\nextends = "default"\nloosen = ["scanner.allowed_globals"]\n'
        '[scanner]\nallowed_globals = ["tests.policy.test_select.Marker"]\n')
    (root / "model.pkl").write_bytes(pickle.dumps(Marker(), protocol=2))
    return root


def test_pyproject_in_an_untrusted_tree_cannot_loosen(cli: Cli, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    tree = hostile_tree(tmp_path / "checkout")
    sub = tree / "src"
    sub.mkdir()
    # Without the rule the file would pass: the policy it names does allow the class.
    explicit = cli("scan", str(tree / "model.pkl"), "--policy", str(tree / "policies/ours.toml"))
    assert explicit.code == 0, explicit.out + explicit.err
    monkeypatch.chdir(sub)
    result = cli("scan", str(tree / "model.pkl"))
    assert result.code == 2, result.out + result.err
    assert str(tree / "pyproject.toml") in result.err
    assert "scanner.allowed_globals" in result.err and "--policy" in result.err
    with pytest.raises(PolicyError, match="looser than the built-in default"):
        load_policy(cwd=sub)


def test_pyproject_may_tighten(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.safehub]\npolicy = "strict"\n')
    policy = load_policy(cwd=tmp_path)
    assert policy.name == "strict"
    assert policy.selected_by == f"selected by [tool.safehub] in {tmp_path / 'pyproject.toml'}"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ok.pkl").write_bytes(pickle.dumps({"a": 1}, protocol=2))
    result = cli("scan", "-f", "json", "ok.pkl")
    assert result.code == 0, result.err
    assert json.loads(result.out)["policy"] == {
        "name": "strict", "chain": ["preset:strict"],
        "selected_by": f"selected by [tool.safehub] in {tmp_path / 'pyproject.toml'}"}


@pytest.mark.parametrize("value", ["permissive", "loose.toml"])
def test_env_var_cannot_weaken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               value: str) -> None:
    (tmp_path / "loose.toml").write_text('schema = 1\nextends = "strict"\n'
                                         'loosen = ["sandbox.timeout_s"]\n'
                                         '[sandbox]\ntimeout_s = 100000\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SAFEHUB_POLICY", value)
    with pytest.raises(PolicyError) as exc:
        load_policy()
    assert "$SAFEHUB_POLICY" in exc.value.message
    assert exc.value.issues, "each loosened key is listed"
    assert load_policy(value).name  # explicitly, it is the user's choice


def test_env_var_may_select_a_stricter_policy(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    (tmp_path / "tight.toml").write_text('schema = 1\nname = "tight"\nextends = "default"\n'
                                         '[sandbox]\ntimeout_s = 10\n')
    for value in ("strict", "default", str(tmp_path / "tight.toml")):
        monkeypatch.setenv("SAFEHUB_POLICY", value)
        assert load_policy().selected_by == "selected by $SAFEHUB_POLICY"


def test_reports_name_the_policy_in_every_format(cli: Cli, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import jsonschema

    monkeypatch.chdir(tmp_path)
    (tmp_path / "ok.pkl").write_bytes(pickle.dumps([1, 2], protocol=2))
    text = cli("scan", "ok.pkl")
    assert "policy: default (preset:default; the built-in default)" in text.out
    monkeypatch.setenv("SAFEHUB_POLICY", "strict")
    data = json.loads(cli("scan", "-f", "json", "ok.pkl").out)
    assert data["policy"]["selected_by"] == "selected by $SAFEHUB_POLICY"
    sarif = json.loads(cli("scan", "-f", "sarif", "ok.pkl").out)
    assert sarif["runs"][0]["properties"]["safehub.policy"]["name"] == "strict"
    schema = Path(__file__).resolve().parents[2].parent / "shared" / "schemas"
    found = sorted(schema.glob("sarif*.json")) if schema.is_dir() else []
    if found:
        jsonschema.validate(sarif, json.loads(found[0].read_text()))
    explicit = cli("scan", "--policy", "strict", "ok.pkl")
    assert "policy: strict (preset:strict; selected explicitly)" in explicit.out


def test_audit_report_names_the_policy(cli: Cli, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "ok.pkl").write_bytes(pickle.dumps([1], protocol=2))
    result = cli("audit", str(folder), "--no-state", "-v", "--policy", "strict")
    assert "policy: strict (preset:strict; selected explicitly)" in result.out, result.out
    data = json.loads(cli("audit", str(folder), "--no-state", "-f", "json").out)
    assert data["policy"]["name"] == "default"
    assert "the built-in default" in data["audit"]["policy"]


def test_ci_templates_pass_the_policy_explicitly() -> None:
    root = Path(__file__).resolve().parents[2]
    workflow = "\n".join(line for line in (root / "docs" / "github-actions-safehub.yml")
                          .read_text().splitlines() if not line.lstrip().startswith("#"))
    steps = [step for step in workflow.split("- name:") if "safehub scan" in step
             or "safehub audit" in step]
    assert steps and all("--policy" in step for step in steps)
    hooks = (root / ".pre-commit-hooks.yaml").read_text()
    assert "args: [--policy, default]" in hooks


def test_hub_commands_name_the_policy(cli: Cli, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "hubconf.py").write_text("dependencies = []\n\ndef tiny():\n    return None\n")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text('[tool.safehub]\npolicy = "strict"\n')
    result = cli("list", str(repo), "--source", "local")
    expected = f"policy: strict (preset:strict; selected by [tool.safehub] in {tmp_path}"
    assert expected in result.err, result.err


IMPOSTOR = "c0ffee" + "0" * 34


@pytest.mark.parametrize("via", ["pyproject", "env"])
def test_an_implicit_policy_cannot_pin_the_commit_a_load_fetches(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, via: str) -> None:
    # A commit pin reads as tightening, but it selects what a ref-less load downloads (and a
    # fork's commit is served through the parent's URLs): from an implicit source, refused.
    proj = tmp_path / "proj"
    proj.mkdir()
    pol = proj / "safehub.toml"
    pol.write_text(f'schema = 1\nextends = "default"\n[repos."pytorch/vision"]\n'
                   f'commit = "{IMPOSTOR}"\n')
    if via == "pyproject":
        (proj / "pyproject.toml").write_text('[tool.safehub]\npolicy = "safehub.toml"\n')
    else:
        monkeypatch.setenv("SAFEHUB_POLICY", str(pol))
    with pytest.raises(PolicyError) as caught:
        load_policy(cwd=proj)
    text = caught.value.diagnostics()
    assert "repos.pytorch/vision.commit" in text and f"{pol}:4" in text, text
    # Explicitly chosen, the same file is the user's own decision.
    explicit = load_policy(pol)
    assert explicit.model.repos["pytorch/vision"].commit == IMPOSTOR


def test_pyproject_parsed_only_when_it_can_name_safehub(tmp_path: Path) -> None:
    """A pyproject.toml that cannot have a ``safehub`` key is not parsed (tomllib's import
    costs every `safehub scan`), so its syntax does not matter; one that can is parsed,
    also when the key is spelled with a TOML escape."""
    from safehub._policy.select import BUILT_IN_DEFAULT, resolve_spec

    (tmp_path / "pyproject.toml").write_text('[project\nname = "x"\n')  # broken, no key
    assert resolve_spec(None, cwd=tmp_path, env={}) == ("default", BUILT_IN_DEFAULT)
    (tmp_path / "pyproject.toml").write_text('[tool."s\\u0061fehub"]\npolicy = "strict"\n')
    assert resolve_spec(None, cwd=tmp_path, env={})[0] == "strict"
    (tmp_path / "pyproject.toml").write_text('[tool.safehub\npolicy = "strict"\n')
    with pytest.raises(PolicyError, match="cannot read"):
        resolve_spec(None, cwd=tmp_path, env={})
