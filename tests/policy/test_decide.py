"""Every rule kind, allowed and denied, through Policy.decide."""

from __future__ import annotations

from pathlib import Path

import pytest

from safehub.errors import PolicyViolation
from safehub.findings import FileReport, Finding
from safehub.policy import (
    DownloadRequest,
    FileRequest,
    Policy,
    RepoRequest,
    load_policy,
)
from safehub.rules import Severity

PIN = "0123456789abcdef0123456789abcdef01234567"
OTHER = "f" * 40
DIGEST = "ab" * 32


# What these decision tests add to the preset they extend is looser than it (a repo, a URL,
# an allowed global): declared, as a real policy must (see test_loader for the rule itself).
LOOSEN = 'loosen = ["repos", "trust.owners", "downloads.allowed_urls", "scanner.allowed_globals"]\n'


def policy_from(tmp_path: Path, body: str, extends: str = "default") -> Policy:
    path = tmp_path / "policy.toml"
    loosen = "" if body.startswith("loosen") else LOOSEN
    path.write_text(f'schema = 1\nname = "test"\nextends = "{extends}"\n{loosen}{body}')
    return load_policy(path)


def test_denied_owner_wins_over_repo_listing(tmp_path: Path) -> None:
    policy = policy_from(tmp_path, '[trust]\ndenied_owners = ["mallory"]\n'
                         '[repos."mallory/net"]\nentrypoints = ["net"]\n')
    decision = policy.decide(RepoRequest("mallory/net", trust_repo=True))
    assert not decision.allowed
    assert decision.trail[0].rule == "trust.denied_owners"
    assert "denied_owners" in decision.fix


def test_repo_rule_deny_and_wildcard(tmp_path: Path) -> None:
    policy = policy_from(tmp_path, '[repos."pytorch/evil"]\nallow = false\n'
                         '[repos."acme/*"]\nentrypoints = ["small"]\n')
    assert not policy.decide(RepoRequest("pytorch/evil")).allowed, "deny beats trusted owner"
    assert policy.decide(RepoRequest("acme/anything", entrypoint="small")).allowed
    denied = policy.decide(RepoRequest("acme/anything", entrypoint="big"))
    assert not denied.allowed
    assert "entrypoints" in denied.fix


def test_exact_repo_rule_beats_owner_wildcard(tmp_path: Path) -> None:
    policy = policy_from(tmp_path, '[repos."acme/*"]\nallow = false\n'
                         f'[repos."acme/good"]\ncommit = "{PIN}"\n')
    assert policy.decide(RepoRequest("acme/good")).allowed
    assert not policy.decide(RepoRequest("acme/other")).allowed


def test_commit_pin_requirement_and_mismatch(tmp_path: Path) -> None:
    policy = policy_from(tmp_path, f'[repos."acme/net"]\ncommit = "{PIN}"\n')
    by_branch = policy.decide(RepoRequest("acme/net", ref="main"))
    assert by_branch.allowed
    assert by_branch.requirement("commit").value == PIN  # type: ignore[union-attr]
    assert policy.decide(RepoRequest("acme/net", ref=PIN)).allowed
    mismatch = policy.decide(RepoRequest("acme/net", ref=OTHER))
    assert not mismatch.allowed
    assert PIN in mismatch.fix


def test_require_commit_pin_for_trusted_owner(tmp_path: Path) -> None:
    policy = policy_from(tmp_path, "[trust]\nrequire_commit_pin = true\n")
    assert not policy.decide(RepoRequest("pytorch/vision")).allowed


def test_raise_if_denied_carries_trail_and_fix() -> None:
    with pytest.raises(PolicyViolation) as exc:
        load_policy("default").check(RepoRequest("nobody/thing"))
    text = exc.value.diagnostics()
    assert "nobody/thing" in text
    assert "trust.unknown_repos" in text
    assert 'extends = "default"' in text, "the fix names where the change goes"


def test_torch_trusted_list_is_read_only_when_the_policy_says_so(tmp_path: Path) -> None:
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "trusted_list").write_text("someone_model\n")
    req = RepoRequest("someone/model", hub_dir=str(hub))
    assert not load_policy("default").decide(req).allowed
    reader = policy_from(tmp_path, "loosen = [\"trust.read_torch_trusted_list\"]\n"
                         "[trust]\nread_torch_trusted_list = true\n")
    assert reader.decide(req).allowed
    assert not reader.decide(RepoRequest("someone/other", hub_dir=str(hub))).allowed


def test_local_sources_are_allowed_sandboxed(tmp_path: Path) -> None:
    decision = load_policy("strict").decide(RepoRequest(str(tmp_path), source="local"))
    assert decision.allowed
    assert decision.requirement("sandbox") is not None


def test_signature_requirements_by_repo_and_path(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "ml.pub").write_text("-----BEGIN PUBLIC KEY-----\n")
    models = tmp_path / "models" / "det"
    models.mkdir(parents=True)
    policy = policy_from(tmp_path, '[[signatures]]\nscope = "pytorch/*"\n'
                         'public_keys = ["keys/ml.pub"]\n'
                         f'[[signatures]]\nscope = "path:{tmp_path}/models/*"\n'
                         'certificate_chains = ["/etc/ca.pem"]\n')
    repo = policy.decide(RepoRequest("pytorch/vision"))
    req = repo.requirement("signature")
    assert req is not None and req.anchors == (str(tmp_path / "keys" / "ml.pub"),)
    local = policy.decide(RepoRequest(str(models), source="local"))
    assert local.requirement("signature").anchors == ("/etc/ca.pem",)  # type: ignore[union-attr]
    assert policy.decide(RepoRequest("facebookresearch/x")).requirement("signature") is None


@pytest.mark.parametrize(("url", "allowed"), [
    ("https://download.pytorch.org/models/x.pth", True),
    ("https://download.pytorch.org.evil.com/models/x.pth", False),
    ("https://download.pytorch.org@evil.com/models/x.pth", False),
    ("https://user:pw@download.pytorch.org/models/x.pth", False),
    ("https://download.pytorch.org:8443/models/x.pth", False),
    ("http://download.pytorch.org/models/x.pth", False),
    ("file:///etc/passwd", False),
    ("ftp://download.pytorch.org/x", False),
    ("HTTPS://DOWNLOAD.PYTORCH.ORG/models/x.pth", True),  # same host: compared by parts
])
def test_download_url_allowlist(url: str, allowed: bool) -> None:
    assert load_policy("default").decide(DownloadRequest(url)).allowed is allowed


def test_prefix_matches_at_path_boundaries(tmp_path: Path) -> None:
    policy = policy_from(tmp_path, '[downloads]\nallowed_urls = ["https://m.example.com/team"]\n')
    assert policy.decide(DownloadRequest("https://m.example.com/team/a.pth")).allowed
    assert not policy.decide(DownloadRequest("https://m.example.com/team-evil/a.pth")).allowed


def test_loopback_http_rule(tmp_path: Path) -> None:
    policy = policy_from(tmp_path, 'loosen = ["downloads.allow_http_loopback", '
                         '"downloads.allowed_urls"]\n[downloads]\n'
                         'allow_http_loopback = true\nallowed_urls = ["http://127.0.0.1:8123/"]\n')
    assert policy.decide(DownloadRequest("http://127.0.0.1:8123/w.pth")).allowed
    assert not policy.decide(DownloadRequest("http://127.0.0.2:8123/w.pth")).allowed
    assert not policy.decide(DownloadRequest("http://example.com:8123/w.pth")).allowed


def test_pins_by_url_and_by_file_name(tmp_path: Path) -> None:
    url = "https://download.pytorch.org/models/r.pth"
    policy = policy_from(tmp_path, f'[downloads.pins]\n"{url}" = "sha256:{DIGEST}"\n'
                         f'"other.pth" = "{"cd" * 32}"\n')
    assert policy.decide(DownloadRequest(url)).requirement("sha256").value == DIGEST  # type: ignore[union-attr]
    by_name = policy.decide(DownloadRequest("https://download.pytorch.org/x/other.pth",
                                            file_name="other.pth"))
    assert by_name.requirement("sha256").value == "cd" * 32  # type: ignore[union-attr]


def test_file_name_pin_applies_to_the_url_basename_and_to_any_file_name(
        tmp_path: Path) -> None:
    """A pin keyed by a file name binds a download named so by its URL (torch.hub's default
    file name) as well as one the caller names so; every pin that applies must hold."""
    other = "cd" * 32
    policy = policy_from(tmp_path, f'[downloads.pins]\n"net.pth" = "{DIGEST}"\n'
                         f'"other.pth" = "{other}"\n"same.pth" = "{DIGEST}"\n')
    url = "https://download.pytorch.org/models/net.pth"
    for file_name in (None, "net.pth", "unpinned.pth", "same.pth"):
        d = policy.decide(DownloadRequest(url, file_name=file_name))
        assert d.allowed, file_name
        assert {r.value for r in d.requirements if r.kind == "sha256"} == {DIGEST}
        assert any(r.rule == "downloads.pins.net.pth" and not r.by_file_name
                   for r in d.requirements)
    # The caller's name alone: required, but marked as not naming the URL.
    [by_name] = policy.decide(DownloadRequest("https://download.pytorch.org/m/x.pth",
                                              file_name="other.pth")).requirements
    assert by_name.value == other and by_name.by_file_name
    # Two pins that disagree: refused, naming both keys.
    conflict = policy.decide(DownloadRequest(url, file_name="other.pth"))
    assert not conflict.allowed
    assert "'net.pth'" in conflict.trail[-1].message and "'other.pth'" in conflict.trail[-1].message
    # The basename is the canonical URL's (query, fragment and dot segments do not hide it),
    # and its %-decoded spelling is matched too.
    for spelled in (f"{url}?x=1", f"{url}#frag", "https://download.pytorch.org/models/a/../net.pth",
                    "https://download.pytorch.org/models/n%65t.pth"):
        assert policy.decide(DownloadRequest(spelled)).requirement("sha256") is not None, spelled


def test_offline_by_policy_and_by_environment(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    url = "https://download.pytorch.org/models/r.pth"
    offline = policy_from(tmp_path, "[downloads]\noffline = true\n")
    assert not offline.decide(DownloadRequest(url)).allowed
    monkeypatch.setenv("SAFEHUB_OFFLINE", "1")
    assert not load_policy("default").decide(DownloadRequest(url)).allowed


def test_file_decisions_follow_findings(tmp_path: Path) -> None:
    finding = Finding("SH101", Severity.LOW, "imports argparse.Namespace: x", path="m.pt",
                      subject="argparse.Namespace")
    report = FileReport("m.pt", "torch-zip", 1, findings=(finding,))
    denied = load_policy("default").decide(FileRequest(report))
    assert not denied.allowed
    assert "argparse.Namespace" in denied.fix
    unknown = FileReport("x.bin", "unknown", 1)
    assert not load_policy("permissive").decide(FileRequest(unknown)).allowed, (
        "what was not scanned is never allowed")


def test_scan_options_merge_global_and_repo_allowances(tmp_path: Path) -> None:
    policy = policy_from(tmp_path, '[scanner]\nallowed_globals = ["argparse.Namespace"]\n'
                         '[repos."acme/net"]\nallowed_globals = ["acme.config.*"]\n'
                         "allow_torchscript = true\n")
    general = policy.scan_options()
    assert general.allowed_globals == ("argparse.Namespace",)
    assert not general.allow_torchscript
    repo = policy.scan_options("acme/net")
    assert repo.allowed_globals == ("argparse.Namespace", "acme.config.*")
    assert repo.allow_torchscript


def test_signature_scope_wildcard_owner(tmp_path: Path) -> None:
    policy = policy_from(tmp_path, '[[signatures]]\nscope = "*/vision"\n'
                         'public_keys = ["/keys/k.pub"]\n')
    assert policy.decide(RepoRequest("pytorch/vision")).requirement("signature") is not None
    assert policy.decide(RepoRequest("pytorch/audio")).requirement("signature") is None
    req = policy.signature_requirements("anyone/vision")[0]
    assert req.public_keys == ("/keys/k.pub",) and req.certificate_chains == ()


def test_wildcard_owner_keys_are_honoured_most_specific_first(tmp_path: Path) -> None:
    # exact > owner/* > */name > */*: a '*/malware' deny reaches every owner's 'malware';
    # a '*/*' deny reaches everything no more specific key allows.
    policy = policy_from(tmp_path, '[repos."*/*"]\nallow = false\n'
                         '[repos."*/malware"]\nallow = false\n'
                         '[repos."acme/*"]\nentrypoints = ["small"]\n'
                         f'[repos."pytorch/vision"]\ncommit = "{PIN}"\n')
    assert not policy.decide(RepoRequest("someone/malware", trust_repo=True)).allowed
    assert not policy.decide(RepoRequest("pytorch/malware")).allowed, "*/malware beats */*"
    assert not policy.decide(RepoRequest("pytorch/audio")).allowed, "*/* denies the rest"
    assert policy.decide(RepoRequest("acme/malware", entrypoint="small")).allowed, \
        "owner/* beats */name"
    assert policy.decide(RepoRequest("pytorch/vision", ref=PIN)).allowed, "exact beats */*"
    pinned = policy_from(tmp_path, f'[repos."*/net"]\ncommit = "{PIN}"\n')
    assert not pinned.decide(RepoRequest("pytorch/net", ref=OTHER)).allowed


def test_a_wildcard_owner_key_that_loosens_needs_loosen(tmp_path: Path) -> None:
    from safehub.errors import PolicyError

    path = tmp_path / "p.toml"
    path.write_text('schema = 1\nextends = "default"\n[repos."*/*"]\nallow = true\n')
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert "allows repo '*/*'" in caught.value.diagnostics()


@pytest.mark.parametrize("body, key", [
    ('[trust]\ndenied_owners = ["evilcorp\\n"]\n', "denied_owners"),
    ('[[signatures]]\nscope = "acme/*\\n"\npublic_keys = ["k.pem"]\n', "signatures"),
    ('[repos."badguy/malware\\n"]\nallow = false\n', "repos"),
    (f'[repos."acme/net"]\ncommit = "{PIN}\\n"\n', "commit"),
])
def test_a_trailing_newline_is_a_schema_error(tmp_path: Path, body: str, key: str) -> None:
    from safehub.errors import PolicyError

    with pytest.raises(PolicyError) as caught:
        policy_from(tmp_path, body)
    assert key in caught.value.diagnostics()
