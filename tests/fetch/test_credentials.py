"""Tokens belong to one origin (scheme, host, port): one test per way a token could leak,
over loopback servers that record the Authorization header of every request."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from safehub._fetch.credentials import Credentials
from safehub.errors import FetchError, InvalidIdentifier
from safehub.fetch import Fetcher
from tests.fetch.fakehub import FakeHub, Fault
from tests.fetch.helpers import FAST, write_policy

TOKEN = "api-secret"


@pytest.fixture
def same_host(hub: FakeHub) -> Iterator[FakeHub]:
    """Another port on the API's host: another origin (a weights server, say)."""
    server = FakeHub(hub.host)
    assert server.port != hub.port
    yield server
    server.close()


def _auth(server: FakeHub) -> list[str | None]:
    return [r.headers.get("authorization") for r in server.log]


def _fetcher(tmp_path: Path, cache_dir: Path, api: FakeHub, *others: FakeHub,
             tokens: dict[str, str] | None = None) -> Fetcher:
    return Fetcher(write_policy(tmp_path / "p.toml", api, *others), cache_dir=cache_dir,
                   http=FAST, tokens=tokens)


def test_github_token_never_reaches_another_port_of_the_api_host(
        tmp_path: Path, cache_dir: Path, hub: FakeHub, same_host: FakeHub,
        monkeypatch: pytest.MonkeyPatch, checkpoint: bytes) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    hub.add_repo("acme/net")
    weights = same_host.add_file("/w.pt", checkpoint)
    fetcher = _fetcher(tmp_path, cache_dir, hub, same_host)
    fetcher.fetch_repo("acme/net:main")
    fetcher.fetch_url(weights)
    assert _auth(hub) and set(_auth(hub)) == {f"Bearer {TOKEN}"}
    assert _auth(same_host) == [None]


def test_origin_token_from_the_environment_goes_to_its_origin_only(
        tmp_path: Path, cache_dir: Path, hub: FakeHub, same_host: FakeHub,
        other_hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFEHUB_TOKEN_MIRROR", "mirror-secret")
    monkeypatch.setenv("SAFEHUB_TOKEN_MIRROR_ORIGIN", hub.url)
    for server in (hub, same_host, other_hub):
        server.add_repo("acme/net")
        _fetcher(tmp_path, cache_dir / server.host / str(server.port), server
                 ).fetch_repo("acme/net:main")
    assert _auth(hub) and set(_auth(hub)) == {"Bearer mirror-secret"}
    assert set(_auth(same_host)) == {None}, "another port of the same host is another origin"
    assert set(_auth(other_hub)) == {None}, "another host"


def test_origin_token_passed_in_code(tmp_path: Path, cache_dir: Path, hub: FakeHub,
                                     same_host: FakeHub) -> None:
    hub.add_repo("acme/net")
    same_host.add_repo("acme/net")
    _fetcher(tmp_path, cache_dir / "a", same_host, tokens={same_host.url: "code-secret"}
             ).fetch_repo("acme/net:main")
    _fetcher(tmp_path, cache_dir / "b", hub, tokens={same_host.url: "code-secret"}
             ).fetch_repo("acme/net:main")
    assert set(_auth(same_host)) == {"Bearer code-secret"} and set(_auth(hub)) == {None}
    with pytest.raises(InvalidIdentifier):  # a bare host is ambiguous: which scheme, port?
        _fetcher(tmp_path, cache_dir, hub, tokens={hub.host: "x"})


@pytest.mark.parametrize("how", ["GITHUB_TOKEN", "origin token"])
def test_weights_downloads_never_carry_a_token(
        tmp_path: Path, cache_dir: Path, hub: FakeHub, monkeypatch: pytest.MonkeyPatch,
        checkpoint: bytes, how: str) -> None:
    # A weights URL is chosen by repo code (hubconf.py, the sandbox broker): with a token on
    # the API's origin, it could read anything the token can. API and archive only.
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    tokens = {hub.url: TOKEN} if how == "origin token" else None
    hub.add_repo("acme/net")
    url = hub.add_file("/raw/victim/private-repo/main/model.pt", checkpoint)
    fetcher = _fetcher(tmp_path, cache_dir, hub, tokens=tokens)
    fetcher.fetch_repo("acme/net:main")
    fetcher.fetch_url(url)
    assert {r.headers.get("authorization") for r in hub.requests_to("/raw/")} == {None}
    api = [r for r in hub.log if not r.path.startswith("/raw/")]
    assert api and {r.headers.get("authorization") for r in api} == {f"Bearer {TOKEN}"}


def test_token_is_dropped_on_a_redirect_to_another_origin_and_after_it(
        hub: FakeHub, same_host: FakeHub, checkpoint: bytes) -> None:
    import io

    from safehub._fetch.http import HttpClient

    final = hub.add_file("/final.pt", checkpoint)
    bounce = same_host.add_file("/bounce.pt", b"", Fault(redirect=final))  # ... and back
    start = hub.add_file("/start.pt", b"", Fault(redirect=bounce))
    client = HttpClient(FAST, Credentials(hub.api, tokens={hub.url: "hub-secret"}, environ={}))
    result = client.download(start, io.BytesIO(), check=lambda url, previous: None,
                             max_bytes=1 << 20, authenticate=True)
    assert result.size == len(checkpoint)
    by_path = {r.path: r.headers.get("authorization") for r in hub.log}
    assert by_path == {"/start.pt": "Bearer hub-secret", "/final.pt": None}
    assert _auth(same_host) == [None]


def test_archive_redirect_to_another_host_gets_no_token(
        tmp_path: Path, cache_dir: Path, hub: FakeHub, other_hub: FakeHub,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    hub.add_repo("acme/net")
    other_hub.repos = hub.repos
    hub.archive_base = other_hub.url
    _fetcher(tmp_path, cache_dir, hub, other_hub).fetch_repo("acme/net:main")
    assert other_hub.count("/codeload/") == 1 and set(_auth(other_hub)) == {None}


@pytest.mark.parametrize("url", [
    "https://ghe-example.com/x", "https://ghe_example.com/x", "https://ghe.example-com/x",
    "https://ghe.example.com:8443/x", "http://ghe.example.com/x",
    "https://ghe.example.com.evil.org/x", "https://evil.org/https://ghe.example.com/",
])
def test_look_alike_origins_get_no_token(url: str) -> None:
    creds = Credentials("https://api.github.com", environ={
        "SAFEHUB_TOKEN_GHE": "t", "SAFEHUB_TOKEN_GHE_ORIGIN": "https://ghe.example.com"})
    assert creds.token_for("https://GHE.Example.com.:443/api/v3") == "t"  # the same origin
    assert creds.token_for(url) is None


def test_old_host_mangled_variable_is_ignored_with_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="safehub.fetch"):
        creds = Credentials("https://api.github.com",
                            environ={"SAFEHUB_TOKEN_GHE_EXAMPLE_COM": "tok-4f9a"})
    assert creds.token_for("https://ghe.example.com/x") is None
    assert "SAFEHUB_TOKEN_GHE_EXAMPLE_COM_ORIGIN" in caplog.text
    assert "tok-4f9a" not in caplog.text + repr(creds)


def test_two_tokens_for_one_origin_are_an_error() -> None:
    creds = Credentials("https://api.github.com", environ={
        "SAFEHUB_TOKEN_A": "one", "SAFEHUB_TOKEN_A_ORIGIN": "https://ghe.example.com",
        "SAFEHUB_TOKEN_B": "two", "SAFEHUB_TOKEN_B_ORIGIN": "https://GHE.example.com:443"})
    with pytest.raises(FetchError):
        creds.token_for("https://ghe.example.com/x")
