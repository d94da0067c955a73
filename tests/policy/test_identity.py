"""Canonical identities in policy decisions: one repo per case-insensitive name, one URL per
RFC 3986 spelling. (The same attacks over real loopback servers: tests/fetch/test_identity.py
and tests/fetch/test_canonical_urls.py.)"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from safehub._policy.repo_id import RepoId
from safehub._policy.urls import canonical_url, url_matches_prefix
from safehub.errors import InvalidIdentifier, PolicyError, SafehubError
from safehub.policy import DownloadRequest, Policy, RepoRequest, load_policy
from tests.conftest import CliResult, run_module

PIN = "0123456789abcdef0123456789abcdef01234567"
DIGEST = "ab" * 32


def policy_from(tmp_path: Path, body: str, extends: str = "default") -> Policy:
    path = tmp_path / "policy.toml"
    path.write_text(f'schema = 1\nname = "test"\nextends = "{extends}"\n'
                    'loosen = ["trust.owners", "downloads.allowed_urls", "repos"]\n' + body)
    return load_policy(path)


# --- repositories ------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "acme/model\n", "acme/model\r", "acme\n/model", "acme/model ", " acme/model", "acme/.",
    "acme/..", "-acme/model", "acme-/model", "ac--me/model", "a" * 40 + "/model",
    "acme/" + "m" * 101, "acme/model.git", "acme/mo/del", "acme", "acme/", "/model",
    "acme/mödel", "acme/mo del", "acme_x/model",
])
def test_repo_names_use_full_match_github_grammar(text: str) -> None:
    with pytest.raises(InvalidIdentifier):
        RepoId.parse(text)
    assert isinstance(InvalidIdentifier("x"), SafehubError)


def test_repo_ids_compare_casefolded_and_keep_their_spelling() -> None:
    a, b = RepoId.parse("PyTorch/Vision"), RepoId.parse("pytorch/vision")
    assert a == b and hash(a) == hash(b) and a.key == "pytorch/vision"
    assert str(a) == "PyTorch/Vision"
    assert a.matches("pytorch/*") and a.matches("*/VISION") and not a.matches("pytorch/vis*")
    assert a.confirmed_by("pytorch/vision").full_name == "pytorch/vision"
    with pytest.raises(InvalidIdentifier):
        a.confirmed_by("evil/vision")  # the API answered for another repository


def test_case_variant_gets_the_exact_repo_rule(tmp_path: Path) -> None:
    """`pytorch/Vision` is the repository `[repos."pytorch/vision"]` pins and restricts."""
    policy = policy_from(tmp_path, f'[repos."pytorch/vision"]\ncommit = "{PIN}"\n'
                         'entrypoints = ["resnet18"]\n')
    evil = policy.decide(RepoRequest("pytorch/Vision", ref="main", entrypoint="evil"))
    assert not evil.allowed and evil.identity == "pytorch/vision"
    assert any(s.rule.endswith("entrypoints") and s.outcome == "deny" for s in evil.trail)
    good = policy.decide(RepoRequest("PYTORCH/VISION", entrypoint="resnet18"))
    assert good.allowed and good.requirement("commit").value == PIN  # type: ignore[union-attr]


@pytest.mark.parametrize("spelling", ["EvilCorp/model", "EVILCORP/model", "evilCorp/x"])
def test_denied_owner_in_any_case_is_denied_under_permissive(tmp_path: Path,
                                                             spelling: str) -> None:
    policy = policy_from(tmp_path, '[trust]\ndenied_owners = ["evilcorp"]\n', "permissive")
    decision = policy.decide(RepoRequest(spelling, trust_repo=True))
    assert not decision.allowed and decision.trail[0].rule == "trust.denied_owners"


def test_trusted_owner_and_wildcard_rules_in_any_case(tmp_path: Path) -> None:
    policy = policy_from(tmp_path, '[trust]\nowners = ["Acme"]\n'
                         '[repos."Mallory/*"]\nallow = false\n')
    assert policy.decide(RepoRequest("ACME/net")).allowed
    assert not policy.decide(RepoRequest("mallory/net", trust_repo=True)).allowed


def test_two_keys_naming_one_repo_are_an_error(tmp_path: Path) -> None:
    # Found when the policy is loaded (its tightening check decides over its repo rules),
    # or at the latest when a request names the repo.
    with pytest.raises(PolicyError):
        policy = policy_from(tmp_path, '[repos."acme/net"]\nentrypoints = ["a"]\n'
                             '[repos."ACME/Net"]\nentrypoints = ["b"]\n')
        policy.decide(RepoRequest("acme/net", entrypoint="b"))


def test_short_sha_ref_must_be_a_prefix_of_the_pin(tmp_path: Path) -> None:
    policy = policy_from(tmp_path, f'[trust]\nowners = ["acme"]\n'
                         f'[repos."acme/net"]\ncommit = "{PIN}"\n')
    assert policy.decide(RepoRequest("acme/net", ref=PIN[:7])).allowed
    assert policy.decide(RepoRequest("acme/net", ref=PIN.upper())).allowed
    assert not policy.decide(RepoRequest("acme/net", ref="fedcba9")).allowed


def test_signature_scopes_match_casefolded(tmp_path: Path) -> None:
    (tmp_path / "k.pub").write_text("-----BEGIN PUBLIC KEY-----\n")
    policy = policy_from(tmp_path, '[[signatures]]\nscope = "pytorch/*"\n'
                         'public_keys = ["k.pub"]\n')
    for spelling in ("pytorch/vision", "PyTorch/vision", "PYTORCH/X"):
        assert policy.decide(RepoRequest(spelling)).requirement("signature") is not None
    assert policy.signature_requirements("PyTorch/Vision")


def test_invalid_repo_name_is_denied(tmp_path: Path) -> None:
    decision = load_policy("permissive").decide(RepoRequest("acme/model\n", trust_repo=True))
    assert not decision.allowed and "\n" not in decision.subject


# --- URLs --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "canonical"), [
    ("HTTPS://Download.PyTorch.org:443/models/r.pth", "https://download.pytorch.org/models/r.pth"),
    ("https://h.example/a/./b/../c.pt", "https://h.example/a/c.pt"),
    ("https://h.example/models/r.pth#frag", "https://h.example/models/r.pth"),
    ("https://h.example/models/r.pth?", "https://h.example/models/r.pth"),
    ("https://h.example/models/r.pth?a=1", "https://h.example/models/r.pth?a=1"),
    ("https://h.example/%7Euser/%41%2d%5f.pt", "https://h.example/~user/A-_.pt"),
    ("https://h.example/a%3bb%3F", "https://h.example/a%3Bb%3F"),
    ("https://h.example.", "https://h.example/"),
    ("http://127.0.0.1:80/x", "http://127.0.0.1/x"),
    ("https://[0:0::1]:8443/x", "https://[::1]:8443/x"),
    ("https://h.example/a/b/..", "https://h.example/a/"),
    ("https://h.example/../../x", "https://h.example/x"),
])
def test_canonical_form(url: str, canonical: str) -> None:
    assert canonical_url(url) == canonical


@pytest.mark.parametrize("url", [
    "https://[::1/x.pth", "https://[::1]x/y", "https://[fe80::1%25eth0]/x", "https://::1/x",
    "https://user@h.example/x", "https://h.example@evil.example/x", "https://h.example\\x",
    "https://h.example/a%2Fb", "https://h.example/a%5cb", "https://h.example/a/%2e%2e/b",
    "https://h.example/a/.%2E/b", "https://h.example/a/%2e/b", "https://h.example/a/..;/b",
    "https://h.example/a/..%3B/b", "https://h.example/a/%252e%252e/b",
    "https://h.example/a/%25%32%65%25%32%65/b", "https://h.example/a/.../b",
    "https://h.example/a/..%20/b", "https://h.example//b", "https://h.example/a//../b",
    "https://h.example/a b", "https://h.example/a\tb", "https://h.example/a\nb",
    "https://h.example/\x00", "https://h.example/a%00", "https://h.example/a%zz",
    "https://h.example/é", "https://exämple.com/", "https://h.example:0/", "https://h.example:99999/",
    "https://h.example:8a/", "https://127.1/x", "https://0x7f.0.0.1/x", "https://2130706433/x",
    "https://0127.0.0.1/x", "https:///x", "ftp://h.example/x", "file:///etc/passwd",
    "//h.example/x", "x.pt", "https://h_.-x/", "https://h.example/a|b",
])
def test_ambiguous_or_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidIdentifier) as err:
        canonical_url(url)
    assert isinstance(err.value, ValueError)  # what torch.hub callers may already catch


def test_allowlist_is_decided_on_the_canonical_url(tmp_path: Path) -> None:
    policy = policy_from(tmp_path, '[downloads]\nallowed_urls = ["https://m.example/allowed/"]\n')
    assert policy.decide(DownloadRequest("https://M.example:443/allowed/x/../w.pt#f")).allowed
    for url in ("https://m.example/allowed/../private/w.pt",
                "https://m.example/allowed/%2e%2e/private/w.pt",
                "https://m.example/allowed/..;/private/w.pt",
                "https://m.example/allowed%2F../private/w.pt",
                "https://m.example/allowed\\..\\private/w.pt"):
        decision = policy.decide(DownloadRequest(url))
        assert not decision.allowed, url


def test_prefix_without_slash_matches_at_segment_boundaries() -> None:
    assert url_matches_prefix("https://m.example/team", "https://m.example/team")
    assert url_matches_prefix("https://m.example/team/a", "https://M.EXAMPLE/team")
    assert not url_matches_prefix("https://m.example/team-evil/a", "https://m.example/team")
    assert not url_matches_prefix("https://m.example/team/../x", "https://m.example/team")


def test_pins_are_looked_up_by_canonical_url(tmp_path: Path) -> None:
    url = "https://download.pytorch.org/models/r.pth"
    policy = policy_from(tmp_path, '[downloads]\nrequire_digests = true\n'
                         f'[downloads.pins]\n"{url}" = "{DIGEST}"\n')
    for spelling in (url, url + "#x", url + "?", "HTTPS://DOWNLOAD.PYTORCH.ORG:443/models/./r.pth"):
        pin = policy.decide(DownloadRequest(spelling)).requirement("sha256")
        assert pin is not None and pin.value == DIGEST, spelling
    other = policy.decide(DownloadRequest(url + "?a=1"))  # another URL: no pin, refused
    assert not other.allowed and other.requirement("sha256") is None


_PIECES = st.sampled_from([
    "a", "B", "allowed", "private", ".", "..", "%2e", "%2E%2e", "%41", "%7e", "%7E", "%2f",
    "%5C", "%25", "%32", "%65", "2e", ";", "..;", "x;y", "%3b", "~", "-", "_", "%20", "%zz",
    "w.pt", "", "%C3%A9", "@", ":", "!", "=", "*",
])
_PATHS = st.lists(st.lists(_PIECES, max_size=3).map("".join), max_size=6).map(
    lambda segments: "/" + "/".join(segments))
_URLS = st.builds(
    lambda scheme, host, port, path, query, frag: f"{scheme}://{host}{port}{path}{query}{frag}",
    st.sampled_from(["http", "HTTP", "https", "HtTpS"]),
    st.sampled_from(["h.example", "H.Example", "h.example.", "127.0.0.1", "[::1]", "[0::1]"]),
    st.sampled_from(["", ":80", ":443", ":8443", ":"]), _PATHS,
    st.sampled_from(["", "?", "?a=1", "?a=%7e", "?q=%2F"]), st.sampled_from(["", "#", "#x"]))


@settings(max_examples=400, deadline=None)
@given(_URLS)
def test_canonicalisation_is_idempotent(url: str) -> None:
    try:
        once = canonical_url(url)
    except InvalidIdentifier:
        return
    assert canonical_url(once) == once
    assert "#" not in once and "/./" not in once and "/../" not in once


# --- the CLI and the hub facade ----------------------------------------------------------------


@pytest.fixture
def clean_cwd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No policy chosen by the environment or a pyproject.toml around the working folder."""
    monkeypatch.delenv("SAFEHUB_POLICY", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.mark.usefixtures("clean_cwd")
def test_explain_shows_canonical_identities(cli: Callable[..., CliResult]) -> None:
    result = cli("policy", "explain", "PyTorch/Vision:main", "--entrypoint", "net",
                 "--url", "HTTPS://Download.PyTorch.org:443/models/x/../r.pth?#frag",
                 "-f", "json")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    identities = [d["identity"] for d in data["decisions"]]
    assert identities == ["pytorch/vision", "https://download.pytorch.org/models/r.pth"]
    text = cli("policy", "explain", "PyTorch/Vision", "--url",
               "HTTPS://Download.PyTorch.org/models/r.pth#x").out
    assert "identity: pytorch/vision\n" in text
    assert "identity: https://download.pytorch.org/models/r.pth\n" in text


@pytest.mark.parametrize("args", [
    ("--url", "https://[::1/x.pth"), ("--url", "https://h.example/a/%2e%2e/b"),
    ("acme/model\n",), ("acme/model:ma\nin",),
])
@pytest.mark.usefixtures("clean_cwd")
def test_explain_malformed_input_is_a_one_line_error(cli: Callable[..., CliResult],
                                                     args: tuple[str, ...]) -> None:
    result = cli("policy", "explain", *args)
    assert result.code == 2 and result.out == ""
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.err, result.err


def test_explain_malformed_url_in_a_real_process(tmp_path: Path) -> None:
    result = run_module("policy", "explain", "--url", "https://[::1/x.pth", cwd=tmp_path)
    assert result.code == 2 and "Traceback" not in result.err
    assert len(result.err.strip().splitlines()) == 1


@pytest.mark.parametrize("url", ["https://[::1/x.pth", "https://user@h.example/x.pth",
                                 "https://h.example/a/%2e%2e/x.pth"])
@pytest.mark.usefixtures("clean_cwd")
def test_hub_functions_raise_a_safehub_error_for_malformed_urls(url: str, tmp_path: Path
                                                                ) -> None:
    import safehub.hub

    with pytest.raises(InvalidIdentifier) as err:
        safehub.hub.load_state_dict_from_url(url, model_dir=str(tmp_path))
    assert isinstance(err.value, SafehubError) and isinstance(err.value, ValueError)
    with pytest.raises(InvalidIdentifier):
        safehub.hub.download_url_to_file(url, str(tmp_path / "x.pth"))
    assert not (tmp_path / "x.pth").exists()


def test_audit_finds_policy_pins_and_locked_repos_by_canonical_identity(tmp_path: Path) -> None:
    from safehub._audit.pins import Pins
    from safehub._fetch.lockfile import LockedRepo, Lockfile

    url = "https://download.pytorch.org/models/r.pth"
    policy = policy_from(tmp_path, f'[downloads.pins]\n"{url}" = "{DIGEST}"\n')
    lock = Lockfile(tmp_path / "safehub.lock")
    lock.add_repo(LockedRepo(repo="Acme/Net", api="https://api.github.com", ref="v1",
                             commit=PIN, archive_sha256=DIGEST, tree_sha256=DIGEST))
    pins = Pins(lockfile=lock, policy=policy)
    found = pins.for_url("HTTPS://Download.PyTorch.org:443/models/./r.pth#x")
    assert [e.digest for e in found] == [DIGEST]
    assert pins.for_url(url + "?a=1") == []
    assert [e.repo for e in pins.repo("acme/net", PIN)] == ["Acme/Net"]
    assert lock.repo("ACME/net", "v1") is not None and lock.repo("acme/net", "V1") is None
