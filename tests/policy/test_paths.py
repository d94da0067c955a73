"""``path:`` signature scopes match canonical real paths, however the folder is spelled."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from safehub._policy.paths import canonical_path, path_scope_matches
from safehub.policy import RepoRequest, load_policy
from tests.conftest import CliResult

Cli = Callable[..., CliResult]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    d = tmp_path / "D"
    (d / "protected" / "sub").mkdir(parents=True)
    (d / "other").mkdir()
    (d / "protected" / "hubconf.py").write_text("dependencies = []\n")
    (d / "alias").symlink_to(d / "protected")
    (tmp_path / "outside").symlink_to(d / "protected")
    return d


def spellings(d: Path) -> list[str]:
    s = str(d)
    return [f"{s}/protected", f"/{s}/protected", f"{s}//protected", f"{s}/./protected",
            f"{s}/other/../protected", f"{s}/protected/", f"{s}/alias", f"{s}/alias/.",
            str(d.parent / "outside"), os.path.relpath(f"{s}/alias")]


def policy(tmp_path: Path, scope: str) -> Path:
    key = tmp_path / "k.pub"
    key.write_text("not read while deciding\n")
    path = tmp_path / "p.toml"
    path.write_text(f'schema = 1\nextends = "default"\n[[signatures]]\nscope = "path:{scope}"\n'
                    f'public_keys = ["{key}"]\n')
    return path


@pytest.mark.parametrize("pattern", ["{d}/protected*", "{d}/protected", "/{d}/./protected*",
                                     "{d}/alias"])
def test_every_spelling_of_the_folder_needs_the_signature(tree: Path, tmp_path: Path,
                                                          pattern: str,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    monkeypatch.chdir(tmp_path)
    loaded = load_policy(policy(tmp_path, pattern.format(d=tree)))
    for spelling in spellings(tree):
        decision = loaded.decide(RepoRequest(spelling, source="local"))
        assert decision.requirement("signature") is not None, spelling
    unrelated = loaded.decide(RepoRequest(str(tree / "other"), source="local"))
    assert unrelated.requirement("signature") is None


def test_glob_characters_in_resolved_folder_names_are_literal(tmp_path: Path) -> None:
    # The pattern names a link; its real target's name holds glob characters, which must
    # not turn into a character class once resolved.
    odd = tmp_path / "a[b]"
    (odd / "m").mkdir(parents=True)
    (tmp_path / "ab" / "m").mkdir(parents=True)
    (tmp_path / "link").symlink_to(odd)
    assert path_scope_matches(f"{tmp_path}/link/*", odd / "m")
    assert not path_scope_matches(f"{tmp_path}/link/*", tmp_path / "ab" / "m")


def test_canonical_path_resolves_links_and_dots(tree: Path) -> None:
    real = str((tree / "protected").resolve())
    assert {canonical_path(s) for s in spellings(tree) if os.path.isabs(s)} == {real}


def test_policy_explain_shows_the_requirement_for_a_symlinked_folder(
        cli: Cli, tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SAFEHUB_POLICY", raising=False)
    p = policy(tmp_path, f"{tree}/protected*")
    for spelling in (f"/{tree}/protected", str(tree / "alias")):
        result = cli("policy", "explain", spelling, "--policy", str(p))
        assert "requires signature" in result.out, (spelling, result.out, result.err)


def test_a_symlink_dropped_under_the_scope_needs_the_signature(tmp_path: Path) -> None:
    # models/evil -> elsewhere/evil: its real path is outside path:/D/models/*, but the
    # path the user named is inside, so the signature is required (either form matches).
    d = tmp_path / "D"
    (d / "models" / "good").mkdir(parents=True)
    (d / "elsewhere" / "evil").mkdir(parents=True)
    (d / "models" / "evil").symlink_to(d / "elsewhere" / "evil")
    loaded = load_policy(policy(tmp_path, f"{d}/models/*"))
    for name in ("good", "evil"):
        decision = loaded.decide(RepoRequest(str(d / "models" / name), source="local"))
        assert decision.requirement("signature") is not None, name
    assert path_scope_matches(f"{d}/models/*", d / "models" / "evil")
    assert not path_scope_matches(f"{d}/models/*", d / "elsewhere" / "evil")


def test_a_relative_scope_is_relative_to_the_policy_file_not_the_cwd(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "proj"
    (d / "models" / "good").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "models" / "good").mkdir(parents=True)
    (d / "k.pub").write_text("not read while deciding\n")
    path = d / "p.toml"
    path.write_text('schema = 1\nextends = "default"\n[[signatures]]\n'
                    'scope = "path:models/*"\npublic_keys = ["k.pub"]\n')
    for cwd in (d, elsewhere, tmp_path):
        monkeypatch.chdir(cwd)
        loaded = load_policy(path)
        covered = loaded.decide(RepoRequest(str(d / "models" / "good"), source="local"))
        assert covered.requirement("signature") is not None, cwd
        other = loaded.decide(RepoRequest(str(elsewhere / "models" / "good"), source="local"))
        assert other.requirement("signature") is None, cwd
