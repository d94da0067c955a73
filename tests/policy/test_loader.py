"""Reading policy files: selection, extends, tighten-only merging, and every bad input."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from safehub.errors import PolicyError
from safehub.policy import RepoRequest, load_policy


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def issues_of(exc: pytest.ExceptionInfo[PolicyError]) -> list[str]:
    return [str(i) for i in exc.value.issues]


def test_extends_a_preset_and_adds(tmp_path: Path) -> None:
    p = write(tmp_path / "acme.toml", """
schema = 1
name = "acme"
extends = "default"
loosen = ["trust.owners", 'repos."other/detector"']
[trust]
owners = ["acme-ml"]
[repos."other/detector"]
commit = "0123456789abcdef0123456789abcdef01234567"
entrypoints = ["detector"]
""")
    policy = load_policy(p)
    assert policy.chain == ["preset:default", str(p)]
    assert {"pytorch", "acme-ml"} <= set(policy.model.trust.owners)
    assert policy.decide(RepoRequest("acme-ml/thing")).allowed
    decision = policy.decide(RepoRequest("other/detector", entrypoint="detector"))
    assert decision.allowed
    assert decision.requirement("commit").value.startswith("0123")  # type: ignore[union-attr]
    assert str(p) in policy.where("repos", "other/detector", "commit")
    assert policy.where("repos", "other/detector", "commit").endswith(":9")


def test_extends_chain_of_files_relative_paths(tmp_path: Path) -> None:
    write(tmp_path / "base" / "org.toml", 'schema = 1\nextends = "strict"\n'
          '[sandbox]\ntimeout_s = 60\n')
    leaf = write(tmp_path / "team.toml", 'schema = 1\nextends = "base/org.toml"\n'
                 'loosen = ["scanner.allowed_globals"]\n'
                 '[scanner]\nallowed_globals = ["argparse.Namespace"]\n')
    policy = load_policy(leaf)
    assert policy.chain == ["preset:strict", str(tmp_path / "base" / "org.toml"), str(leaf)]
    assert policy.model.sandbox.timeout_s == 60
    assert policy.model.trust.require_commit_pin is True


def test_loosening_needs_to_be_declared(tmp_path: Path) -> None:
    p = write(tmp_path / "loose.toml", """schema = 1
extends = "strict"
[trust]
require_commit_pin = false
[sandbox]
timeout_s = 999
[scanner]
block_severity = "high"
""")
    with pytest.raises(PolicyError) as exc:
        load_policy(p)
    found = issues_of(exc)
    assert any("trust.require_commit_pin" in i and ":4:" in i for i in found), found
    assert any("sandbox.timeout_s" in i for i in found)
    assert any("scanner.block_severity" in i for i in found)
    declared = write(tmp_path / "declared.toml", p.read_text().replace(
        'extends = "strict"', 'extends = "strict"\nloosen = ["trust.require_commit_pin", '
        '"sandbox.timeout_s", "scanner.block_severity"]'))
    assert load_policy(declared).model.sandbox.timeout_s == 999


def test_tightening_is_always_allowed(tmp_path: Path) -> None:
    p = write(tmp_path / "t.toml", 'schema = 1\nextends = "permissive"\n[trust]\n'
              'unknown_repos = "deny"\n[sandbox]\ntimeout_s = 5\nrequired_layers = ["all"]\n')
    policy = load_policy(p)
    assert policy.model.trust.unknown_repos == "deny"
    assert "seccomp" in policy.model.sandbox.required_layers


def test_every_error_at_once_with_file_line_and_key(tmp_path: Path) -> None:
    p = write(tmp_path / "bad.toml", """schema = 1
colour = "blue"
[trust]
owners = ["ok", "not an owner!"]
unknown_repos = "maybe"
[sandbox]
timeout_s = "soon"
required_layers = ["seccomp", "tinfoil"]
[repos."pytorch/vision"]
commit = "main"
""")
    with pytest.raises(PolicyError) as exc:
        load_policy(p)
    found = issues_of(exc)
    assert len(found) == 6, found
    expected = [("colour", 2, "unknown key"), ("trust.owners", 4, "owner"),
                ("trust.unknown_repos", 5, "deny"), ("sandbox.timeout_s", 7, ""),
                ("sandbox.required_layers", 8, "tinfoil"), ("repos.pytorch/vision.commit", 10,
                                                            "commit")]
    for key, line, text in expected:
        assert any(f"{p}:{line}: {key}: " in i and text in i for i in found), (key, found)


@pytest.mark.parametrize(("text", "needle"), [
    ('schema = 1\n[trust]\nowners = ["x"]\ndenied_owners = ["x"]\n', "both trusted and denied"),
    ('schema = 1\n[repos."a/b"]\nallow = false\ncommit = "' + "a" * 40 + '"\n',
     "denied (allow = false) but also configured"),
    ('schema = 1\n[downloads]\nallowed_urls = ["http://example.com/"]\n', "must be https"),
    ('schema = 1\n[scanner]\nallowed_globals = ["os.system"]\n', "cannot be allowed"),
    ('schema = 1\n[scanner]\nallowed_globals = ["builtins.*"]\n', "below the top level"),
    ('schema = 1\n[[signatures]]\nscope = "a/b"\n', "needs public_keys"),
    ('schema = 2\n', "unsupported schema version"),
    ('name = "no schema"\n', "schema"),
    ('schema = 1\n[downloads.pins]\n"https://x/y" = "abc"\n', "64-hex"),
    # Pin keys that no download can match would leave the file they meant unpinned.
    ('schema = 1\n[downloads.pins]\n"https://x/y.pth " = "' + "ab" * 32 + '"\n', "pin nothing"),
    ('schema = 1\n[downloads.pins]\n"https://me@x/y.pth" = "' + "ab" * 32 + '"\n',
     "pin nothing"),
    ('schema = 1\n[downloads.pins]\n"https://x/y.pth\\t" = "' + "ab" * 32 + '"\n',
     "pin nothing"),
    ('schema = 1\n[downloads.pins]\n"ftp://x/y.pth" = "' + "ab" * 32 + '"\n', "pin nothing"),
    ('schema = 1\n[downloads.pins]\n"https:/x/y.pth" = "' + "ab" * 32 + '"\n', "pin nothing"),
    ('schema = 1\n[downloads.pins]\n"y.pth " = "' + "ab" * 32 + '"\n', "pin nothing"),
])
def test_contradictory_or_invalid_values(tmp_path: Path, text: str, needle: str) -> None:
    p = write(tmp_path / "p.toml", text)
    with pytest.raises(PolicyError) as exc:
        load_policy(p)
    assert any(needle in i for i in issues_of(exc)), issues_of(exc)


def test_http_loopback_urls_need_the_loopback_rule(tmp_path: Path) -> None:
    ok = write(tmp_path / "ok.toml", 'schema = 1\n[downloads]\nallow_http_loopback = true\n'
               'allowed_urls = ["http://127.0.0.1:8000/"]\n')
    assert load_policy(ok).model.downloads.allowed_urls == ["http://127.0.0.1:8000/"]
    bad = write(tmp_path / "bad.toml", 'schema = 1\n[downloads]\nallow_http_loopback = true\n'
                'allowed_urls = ["http://10.0.0.1/"]\n')
    with pytest.raises(PolicyError):
        load_policy(bad)


def test_unknown_preset_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as exc:
        load_policy("stritc")
    assert "not found" in exc.value.message
    assert "strict" in (exc.value.fix or "")
    with pytest.raises(PolicyError):
        load_policy(tmp_path / "missing.toml")


def test_missing_extends_names_the_extending_file(tmp_path: Path) -> None:
    p = write(tmp_path / "child.toml", 'schema = 1\nextends = "nowhere.toml"\n')
    with pytest.raises(PolicyError) as exc:
        load_policy(p)
    assert "extended by" in exc.value.message and str(p) in exc.value.message


def test_cyclic_extends(tmp_path: Path) -> None:
    write(tmp_path / "a.toml", 'schema = 1\nextends = "b.toml"\n')
    write(tmp_path / "b.toml", 'schema = 1\nextends = "a.toml"\n')
    with pytest.raises(PolicyError) as exc:
        load_policy(tmp_path / "a.toml")
    assert "cycle" in exc.value.message


def test_invalid_toml_reports_the_line(tmp_path: Path) -> None:
    p = write(tmp_path / "p.toml", 'schema = 1\n[trust\nowners = []\n')
    with pytest.raises(PolicyError) as exc:
        load_policy(p)
    assert exc.value.issues[0].line == 2


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of permissions")
def test_unreadable_file(tmp_path: Path) -> None:
    p = write(tmp_path / "p.toml", "schema = 1\n")
    p.chmod(0)
    with pytest.raises(PolicyError) as exc:
        load_policy(p)
    assert "cannot be read" in exc.value.message


def test_unreadable_path_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "dir.toml").mkdir()
    with pytest.raises(PolicyError) as exc:
        load_policy(tmp_path / "dir.toml")
    assert "cannot be read" in exc.value.message


def test_selection_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "project"
    write(project / "pyproject.toml", '[tool.safehub]\npolicy = "policies/p.toml"\n')
    write(project / "policies" / "p.toml", 'schema = 1\nname = "from-pyproject"\n'
          'extends = "strict"\n')
    sub = project / "src" / "pkg"
    sub.mkdir(parents=True)
    monkeypatch.delenv("SAFEHUB_POLICY", raising=False)
    assert load_policy(cwd=sub).name == "from-pyproject"
    monkeypatch.setenv("SAFEHUB_POLICY", "strict")
    assert load_policy(cwd=sub).name == "strict"
    assert load_policy(cwd=sub).selected_by == "selected by $SAFEHUB_POLICY"
    assert load_policy("permissive", cwd=sub).name == "permissive"
    monkeypatch.setenv("SAFEHUB_POLICY", str(tmp_path / "nope.toml"))
    with pytest.raises(PolicyError) as exc:
        load_policy(cwd=sub)
    assert "SAFEHUB_POLICY" in exc.value.message, "never a silent fallback"


def test_default_when_nothing_selects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SAFEHUB_POLICY", raising=False)
    policy = load_policy(cwd=tmp_path)
    assert policy.name == "default"
    assert policy.selected_by == "the built-in default"


def test_signature_rules_point_at_their_own_file_and_line(tmp_path: Path) -> None:
    base = write(tmp_path / "base.toml", 'schema = 1\nextends = "default"\n\n'
                 '[[signatures]]\nscope = "acme/*"\npublic_keys = ["a.pub"]\n')
    leaf = write(tmp_path / "leaf.toml", 'schema = 1\nextends = "base.toml"\n'
                 '[[signatures]]\nscope = "other/*"\npublic_keys = ["b.pub"]\n')
    policy = load_policy(leaf)
    assert [r.scope for r in policy.model.signatures] == ["acme/*", "other/*"]
    assert policy.where("signatures", "0") == f"{base}:4"
    assert policy.where("signatures", "1") == f"{leaf}:3"
