"""A policy that extends another cannot loosen it by accident.

Three families: strict typing (a string never passes for a bool or a number), the
generic comparison of validated effective values (one generated case per schema field,
so a new field cannot be forgotten), and child rules that allow what a parent pattern
denied.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from safehub._policy.schema import STRICTER, PolicyModel
from safehub._policy.tighten import direction_of, loosened_by, loosenings
from safehub.errors import PolicyError
from safehub.policy import RepoRequest, load_policy

SHA = "0123456789abcdef0123456789abcdef01234567"
DIGEST = "ab" * 32


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def issues(path: Path) -> list[str]:
    with pytest.raises(PolicyError) as exc:
        load_policy(path)
    return [str(i) for i in exc.value.issues]


# --- strict types ---------------------------------------------------------------------------


@pytest.mark.parametrize(("section", "key", "value"), [
    ("trust", "require_commit_pin", '"false"'),
    ("trust", "honor_trust_repo", '"true"'),
    ("trust", "require_commit_pin", "0"),
    ("downloads", "require_digests", '"no"'),
    ("downloads", "offline", '"off"'),
    ("downloads", "max_size_mb", '"999999"'),
    ("scanner", "max_file_size_mb", "1.5"),
    ("sandbox", "timeout_s", '"1e9"'),
    ("sandbox", "memory_mb", "true"),
    ('repos."pytorch/vision"', "allow", '"yes"'),
    ('repos."pytorch/vision"', "allow_torchscript", "1"),
])
def test_strings_and_numbers_never_coerce(tmp_path: Path, section: str, key: str,
                                          value: str) -> None:
    # Even with the key listed in loosen: a wrongly typed value is a schema error.
    p = write(tmp_path / "p.toml", f'schema = 1\nextends = "strict"\nloosen = ["{key}", '
              f'"{section.split(".")[0]}"]\n[{section}]\n{key} = {value}\n')
    found = issues(p)
    assert any(key in i and "valid" in i for i in found), found


def test_issue_example_is_refused_and_the_strict_preset_holds(tmp_path: Path) -> None:
    p = write(tmp_path / "p.toml", 'schema = 1\nextends = "strict"\n[trust]\n'
              'require_commit_pin = "false"\n[downloads]\nrequire_digests = "no"\n'
              'max_size_mb = "999999"\n')
    found = issues(p)
    assert len(found) == 3, found
    assert load_policy("strict").model.trust.require_commit_pin is True


def test_integers_are_accepted_for_seconds(tmp_path: Path) -> None:
    p = write(tmp_path / "p.toml", 'schema = 1\nextends = "strict"\n[sandbox]\ntimeout_s = 30\n')
    assert load_policy(p).model.sandbox.timeout_s == 30.0


# --- the generic comparison, one generated case per field -------------------------------------

# A valid value for each list/str field, used to build a looser and a stricter policy.
SAMPLES: dict[str, Any] = {
    "trust.owners": ["acme"],
    "trust.denied_owners": ["mallory"],
    "downloads.allowed_urls": ["https://weights.example.com/"],
    "downloads.github_api": "https://ghe.example.com/api/v3",
    "downloads.pins": {"https://download.pytorch.org/x.pth": DIGEST},
    "scanner.allowed_globals": ["argparse.Namespace"],
    "sandbox.required_layers": ["seccomp"],
    "signatures": [{"scope": "acme/*", "public_keys": ["k.pub"]}],
}


def _leaves(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, info in model.model_fields.items():
        path = (*prefix, info.alias or name)
        direction = direction_of(info)
        annotation = info.annotation
        if direction == "section" and isinstance(annotation, type):
            out.extend(_leaves(annotation, path))
        elif direction not in ("meta", "repos"):
            out.append(path)
    return out


def _field(path: tuple[str, ...]) -> Any:
    model: Any = PolicyModel
    info = None
    for part in path:
        info = next(f for n, f in model.model_fields.items() if (f.alias or n) == part)
        model = info.annotation
    return info


def _pair(path: tuple[str, ...]) -> tuple[Any, Any]:
    """(strict, loose) values for the field at ``path``."""
    info = _field(path)
    direction = direction_of(info)
    dotted = ".".join(path)
    if direction in ("true", "false"):
        strict = direction == "true"
        return strict, not strict
    if direction == "lower":
        return (info.default, info.default * 2)
    if direction == "higher":
        return (info.default * 2, info.default)
    if direction == "order":
        values = typing.get_args(info.annotation)
        return values[0], values[-1]
    sample = SAMPLES[dotted]
    if direction == "subset":
        return [], sample
    if direction == "fixed":
        return info.default, sample
    if direction in ("superset", "pins", "rules"):
        return sample, type(sample)()
    raise AssertionError(f"no generated case for direction {direction!r} of {dotted}")


def _model(path: tuple[str, ...], value: Any) -> PolicyModel:
    data: dict[str, Any] = {"schema": 1}
    cursor = data
    for part in path[:-1]:
        cursor = cursor.setdefault(part, {})
    if value is not None:
        cursor[path[-1]] = value
    return PolicyModel.model_validate(data)


def test_every_field_says_which_way_is_stricter() -> None:
    def walk(model: type[BaseModel], where: str) -> list[str]:
        missing = []
        for name, info in model.model_fields.items():
            extra = info.json_schema_extra
            if not (isinstance(extra, dict) and STRICTER in extra):
                missing.append(f"{where}{name}")
            annotation = info.annotation
            for arg in (annotation, *typing.get_args(annotation)):
                if isinstance(arg, type) and issubclass(arg, BaseModel):
                    missing += walk(arg, f"{where}{name}.")
        return missing

    assert walk(PolicyModel, "") == []


@pytest.mark.parametrize("path", _leaves(PolicyModel), ids=".".join)
def test_generated_loosening_of_each_field_is_caught(path: tuple[str, ...]) -> None:
    strict_value, loose_value = _pair(path)
    strict, loose = _model(path, strict_value), _model(path, loose_value)
    found = loosenings(strict, loose)
    assert [item.path for item in found] == [path], found
    if direction_of(_field(path)) != "fixed":  # a fixed value loosens whichever way it changes
        assert loosenings(loose, strict) == [], "the other way round only tightens"
    assert loosenings(strict, strict) == []


def test_generated_cases_cover_repo_rule_fields() -> None:
    parent = PolicyModel.model_validate({"schema": 1, "trust": {"owners": ["acme"]}, "repos": {
        "acme/net": {"commit": SHA, "entrypoints": ["net"], "allowed_globals": []}}})
    looser = {"allow": None, "commit": None, "entrypoints": ["net", "evil"],
              "allowed_globals": ["argparse.Namespace"], "allow_torchscript": True}
    for key, value in looser.items():
        rule: dict[str, Any] = {"commit": SHA, "entrypoints": ["net"]}
        if value is None:
            rule.pop(key, None)
        else:
            rule[key] = value
        if key == "allow":
            continue  # allow = true is the default; covered by the deny tests below
        child = PolicyModel.model_validate({"schema": 1, "trust": {"owners": ["acme"]},
                                            "repos": {"acme/net": rule}})
        found = [item.path for item in loosenings(parent, child)]
        assert found == [("repos", "acme/net", key)], (key, found)


# --- spellings of loosening, through real files -----------------------------------------------

PARENT_DENIES = ('schema = 1\nextends = "permissive"\n[trust]\ndenied_owners = ["mallory"]\n'
                 '[repos."evilcorp/*"]\nallow = false\n[repos."pytorch/vision"]\n'
                 f'commit = "{SHA}"\nentrypoints = ["resnet18"]\n'
                 '[downloads.pins]\n"https://download.pytorch.org/r.pth" = "' + DIGEST + '"\n')

LOOSER_CHILDREN = {
    "exact repo under a denying pattern": ('[repos."evilcorp/malware"]\nentrypoints = ["x"]\n',
                                           'repos."evilcorp/malware"'),
    "wider entrypoints": ('[repos."pytorch/vision"]\nentrypoints = ["resnet18", "evil"]\n',
                          'repos."pytorch/vision".entrypoints'),
    "other commit": ('[repos."pytorch/vision"]\ncommit = "' + "f" * 40 + '"\n',
                     'repos."pytorch/vision".commit'),
    "repo allowed globals": ('[repos."pytorch/vision"]\nallowed_globals = ["argparse.Namespace"]\n',
                             'repos."pytorch/vision".allowed_globals'),
    "repo torchscript": ('[repos."pytorch/vision"]\nallow_torchscript = true\n',
                         'repos."pytorch/vision".allow_torchscript'),
    "global allowed_globals": ('[scanner]\nallowed_globals = ["argparse.Namespace"]\n',
                               "scanner.allowed_globals"),
    "lower severity threshold": ('[scanner]\nblock_severity = "critical"\n',
                                 "scanner.block_severity"),
    "URL allow entry": ('[downloads]\nallowed_urls = ["http://127.0.0.1/"]\n'
                        'allow_http_loopback = true\n', "downloads"),
    "changed pin": ('[downloads.pins]\n"https://download.pytorch.org/r.pth" = "' + "cd" * 32
                    + '"\n', "downloads.pins"),
    "another API": ('[downloads]\ngithub_api = "https://evil.example.com"\n',
                    "downloads.github_api"),
    "more time": ("[sandbox]\ntimeout_s = 1e6\n", "sandbox.timeout_s"),
}


@pytest.mark.parametrize("case", LOOSER_CHILDREN, ids=str)
def test_each_spelling_of_loosening_needs_loosen(tmp_path: Path, case: str) -> None:
    body, key = LOOSER_CHILDREN[case]
    write(tmp_path / "parent.toml", PARENT_DENIES)
    child = write(tmp_path / "child.toml", f'schema = 1\nextends = "parent.toml"\n{body}')
    found = issues(child)
    assert found and all("loosen" in i for i in found), found
    declared = write(tmp_path / "declared.toml", f"schema = 1\nextends = \"parent.toml\"\n"
                     f"loosen = [{key!r}]\n{body}")
    load_policy(declared)


def test_denying_pattern_stays_denied_without_loosen(tmp_path: Path) -> None:
    write(tmp_path / "parent.toml", PARENT_DENIES)
    assert not load_policy(tmp_path / "parent.toml").decide(
        RepoRequest("evilcorp/malware")).allowed
    child = write(tmp_path / "child.toml", 'schema = 1\nextends = "parent.toml"\n'
                  '[repos."evilcorp/malware"]\nentrypoints = ["x"]\n')
    assert any('repos.evilcorp/malware' in i for i in issues(child))


def test_tightening_spellings_pass(tmp_path: Path) -> None:
    write(tmp_path / "parent.toml", PARENT_DENIES)
    child = write(tmp_path / "child.toml", 'schema = 1\nextends = "parent.toml"\n'
                  '[trust]\ndenied_owners = ["eve"]\nunknown_repos = "deny"\n'
                  '[repos."pytorch/vision"]\nentrypoints = []\n'
                  '[repos."evilcorp/tool"]\nallow = false\n'
                  '[downloads]\nallowed_urls = ["https://download.pytorch.org/models/"]\n'
                  'require_digests = true\nmax_size_mb = 10\n'
                  '[downloads.pins]\n"https://download.pytorch.org/new.pth" = "' + DIGEST + '"\n'
                  '[scanner]\nblock_severity = "info"\n[sandbox]\ntimeout_s = 1\n')
    load_policy(child)


def test_new_trusted_repo_in_default_needs_loosen(tmp_path: Path) -> None:
    child = write(tmp_path / "p.toml", 'schema = 1\nextends = "default"\n'
                  '[repos."acme/model"]\nentrypoints = ["m"]\n')
    assert any("repos.acme/model" in i for i in issues(child))
    ok = write(tmp_path / "ok.toml", 'schema = 1\nextends = "default"\n'
               'loosen = [\'repos."acme/model"\']\n[repos."acme/model"]\nentrypoints = ["m"]\n')
    assert load_policy(ok).decide(RepoRequest("acme/model", entrypoint="m")).allowed


def test_loosen_entries_match_whole_parts() -> None:
    path = ("repos", "acme/m.v2", "commit")
    assert loosened_by(['repos."acme/m.v2"'], path)
    assert loosened_by(["repos.acme/m.v2"], path)
    assert loosened_by(["repos"], path)
    assert not loosened_by(["repos.acme/m"], path)
    assert not loosened_by(['repos."acme/m"'], path)
    assert not loosened_by(["repo"], path)


def test_unknown_loosen_entry_is_reported(tmp_path: Path) -> None:
    p = write(tmp_path / "p.toml", 'schema = 1\nextends = "default"\n'
              'loosen = ["sandbx.timeout_s"]\n')
    assert any("names no policy key" in i for i in issues(p))


def test_entries_already_covered_by_the_parent_are_not_loosening() -> None:
    parent = PolicyModel.model_validate({"schema": 1, "scanner": {
        "allowed_globals": ["fairseq.data.*"]}, "downloads": {
        "allowed_urls": ["https://download.pytorch.org/"]}})
    child = PolicyModel.model_validate({"schema": 1, "scanner": {
        "allowed_globals": ["fairseq.data.*", "fairseq.data.Dictionary"]}, "downloads": {
        "allowed_urls": ["https://download.pytorch.org/", "https://download.pytorch.org/m/"]}})
    assert loosenings(parent, child) == []
    deeper = PolicyModel.model_validate({"schema": 1, "scanner": {
        "allowed_globals": ["fairseq.data.sub.Thing"]}})
    assert [i.dotted for i in loosenings(parent, deeper)] == ["scanner.allowed_globals"]
