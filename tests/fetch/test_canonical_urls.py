"""The URL decided on is the URL requested: differential tests against a loopback server that
normalises paths as CDNs do, over direct downloads, redirect hops and sandbox broker requests."""

from __future__ import annotations

import hashlib
import http.client
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from safehub._policy.urls import canonical_url, url_matches_prefix
from safehub._sandbox.broker import BrokerService
from safehub.errors import IntegrityError, InvalidIdentifier, PolicyViolation, SafehubError
from safehub.fetch import Fetcher, Lockfile
from tests.fetch.fakehub import FakeHub
from tests.fetch.helpers import FAST, leftovers
from tests.fetch.normserver import NormalisingServer, server_view

SECRET = b"SECRET: not for download"

# Paths that start under /allowed/ as a string, and that the server resolves to /private/.
ATTACKS = [
    "/allowed/../private/w.pt",
    "/allowed/%2e%2e/private/w.pt",
    "/allowed/%2E./private/w.pt",
    "/allowed/..;/private/w.pt",
    "/allowed/..%3B/private/w.pt",
    "/allowed/..%2Fprivate/w.pt",
    "/allowed/..%5Cprivate/w.pt",
    "/allowed/..\\private/w.pt",
    "/allowed/%252e%252e/private/w.pt",
    "/allowed/%25%32%65%25%32%65/private/w.pt",
    "/allowed//../private/w.pt",
    "/allowed/.../private/w.pt",
    "/allowed/..%20/private/w.pt",
]


@pytest.fixture
def norm(checkpoint: bytes) -> Iterator[NormalisingServer]:
    server = NormalisingServer()
    server.files["/allowed/w.pt"] = checkpoint
    server.files["/private/w.pt"] = SECRET
    yield server
    server.close()


def _policy(path: Path, server_url: str, body: str = "") -> Path:
    path.write_text(
        'schema = 1\nname = "test"\nextends = "default"\n'
        'loosen = ["downloads.allow_http_loopback", "downloads.allowed_urls"]\n'
        f'[downloads]\nallow_http_loopback = true\nallowed_urls = ["{server_url}/allowed/"]\n'
        f"{body}", encoding="utf-8")
    return path


def _old_prefix_check(url: str, prefix: str) -> bool:
    """safehub's check before canonical URLs: parts compared, the raw path as a string."""
    u, p = urlsplit(url), urlsplit(prefix)
    return (u.scheme, u.hostname, u.port) == (p.scheme, p.hostname, p.port) and \
        u.path.startswith(p.path)


def _raw_get(server_url: str, target: str) -> tuple[int, bytes, str]:
    parts = urlsplit(server_url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        conn.request("GET", target)
        resp = conn.getresponse()
        resolved = resp.getheader("X-Resolved", "").encode("latin-1").decode("utf-8",
                                                                              "surrogatepass")
        return resp.status, resp.read(), resolved
    finally:
        conn.close()


@pytest.mark.parametrize("attack", ATTACKS)
def test_old_prefix_check_was_bypassable_and_the_canonical_one_is_not(
        attack: str, norm: NormalisingServer, tmp_path: Path, cache_dir: Path) -> None:
    url = norm.url + attack
    prefix = f"{norm.url}/allowed/"
    # Without safehub's canonical form: the string check passes and the server serves the
    # private file.
    assert _old_prefix_check(url, prefix)
    assert _raw_get(norm.url, attack)[:2] == (200, SECRET)
    norm.log.clear()
    # With it: refused (malformed or outside the allowlist), and nothing is requested.
    assert not url_matches_prefix(url, prefix)
    fetcher = Fetcher(_policy(tmp_path / "p.toml", norm.url), cache_dir=cache_dir, http=FAST)
    with pytest.raises((InvalidIdentifier, PolicyViolation)):
        fetcher.fetch_url(url)
    assert norm.log == [] and leftovers(cache_dir) == []


@pytest.mark.parametrize("location", ["/allowed/%2e%2e/private/w.pt", "/allowed/../private/w.pt",
                                      "/allowed/..;/private/w.pt", "/allowed//../private/w.pt",
                                      "/allowed/.\t./private/w.pt", "/allowed/..%2fprivate/w.pt",
                                      "http://user@127.0.0.1/private/w.pt"])
def test_redirect_hops_are_canonical_too(location: str, norm: NormalisingServer,
                                         tmp_path: Path, cache_dir: Path) -> None:
    norm.redirects["/allowed/jump.pt"] = location
    fetcher = Fetcher(_policy(tmp_path / "p.toml", norm.url), cache_dir=cache_dir, http=FAST)
    with pytest.raises(SafehubError):
        fetcher.fetch_url(f"{norm.url}/allowed/jump.pt")
    assert not norm.served("/private/w.pt") and leftovers(cache_dir) == []


def test_sandbox_broker_requests_are_canonical(norm: NormalisingServer, tmp_path: Path,
                                               cache_dir: Path) -> None:
    from safehub._hub.runner import PolicyBroker

    fetcher = Fetcher(_policy(tmp_path / "p.toml", norm.url), cache_dir=cache_dir, http=FAST)
    broker = PolicyBroker(fetcher, None)
    service = BrokerService(broker, tmp_path / "grants")
    for rid, attack in enumerate(ATTACKS, 1):
        reply, fds = service.handle({"t": "fetch", "id": rid, "url": norm.url + attack,
                                     "file_name": None, "check_hash": False})
        assert reply["ok"] is False and fds == [], attack
    assert not norm.served("/private/w.pt")
    spelled = norm.url.upper() + "/allowed/x/../w.pt#frag"
    reply, fds = service.handle({"t": "fetch", "id": 99, "url": spelled, "file_name": None,
                                 "check_hash": False})
    for fd in fds:
        os.close(fd)
    assert reply["ok"] is True and service.fetched == [f"{norm.url}/allowed/w.pt"]
    assert broker.served == [f"{norm.url}/allowed/w.pt"]


def test_pins_bind_every_spelling_of_the_url(hub: FakeHub, tmp_path: Path, cache_dir: Path,
                                            checkpoint: bytes) -> None:
    """`url#x`, `url?` and `HTTP://HOST/...` are the pinned URL; `url?a=1` is another URL,
    which has no pin and is refused when pins are required."""
    import torch

    from tests.fetch.helpers import torch_bytes, write_policy

    tampered = torch_bytes({"weight": torch.zeros(3)})
    url = hub.add_file("/models/r.pt", tampered)  # the server now serves other bytes
    policy = write_policy(tmp_path / "p.toml", hub, body=(
        "require_digests = true\n"
        f'[downloads.pins]\n"{url}" = "{hashlib.sha256(checkpoint).hexdigest()}"\n'))
    fetcher = Fetcher(policy, cache_dir=cache_dir, http=FAST)
    host = urlsplit(url).netloc
    for spelling in (url, url + "#x", url + "?", f"HTTP://{host.upper()}/models/./r.pt"):
        with pytest.raises(IntegrityError):
            fetcher.fetch_url(spelling)
    with pytest.raises(PolicyViolation) as err:
        fetcher.fetch_url(url + "?a=1")
    assert "no SHA-256 pin" in err.value.message
    assert leftovers(cache_dir) == []


def test_one_cache_entry_and_lock_entry_per_url(hub: FakeHub, tmp_path: Path,
                                               make_fetcher: Callable[..., Fetcher],
                                               checkpoint: bytes) -> None:
    url = hub.add_file("/models/r.pt", checkpoint)
    lock = Lockfile(tmp_path / "safehub.lock")
    fetcher = make_fetcher(lockfile=lock)
    first = fetcher.fetch_url(url + "#frag")
    assert first.url == url and not first.from_cache
    host = urlsplit(url).netloc
    again = fetcher.fetch_url(f"HTTP://{host}/models/x/../r.pt?")
    assert again.from_cache and again.path == first.path
    assert list(lock.files) == [url] and hub.count("/models/") == 1
    lock.save()
    frozen = make_fetcher(lockfile=tmp_path / "safehub.lock", frozen=True)
    assert frozen.fetch_url(url + "#other").sha256 == first.sha256


_PIECES = st.sampled_from([
    "allowed", "private", "w.pt", "a", ".", "..", "...", "%2e", "%2E", "%2e%2e", "%41", "%7e",
    "%2f", "%2F", "%5c", "\\", "%25", "%32", "%65", "2e", ";", ";x", "%3b", "%3B", "%20", "~",
    "-", "",
])
_PATHS = st.builds(
    lambda start, segments: start + "/" + "/".join(segments),
    st.sampled_from(["", "/allowed", "/allowed/sub"]),
    st.lists(st.lists(_PIECES, max_size=3).map("".join), min_size=1, max_size=5))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=_PATHS, query=st.sampled_from(["", "?", "?a=1"]))
def test_canonical_url_decides_what_the_server_serves(norm: NormalisingServer, path: str,
                                                     query: str) -> None:
    """For every URL safehub accepts: the server serves the canonical URL exactly as it
    serves the URL as written, and if the canonical URL is under /allowed/, so is what the
    server serves (the decision is made on what is actually fetched)."""
    url = norm.url + path + query
    try:
        canonical = canonical_url(url)
    except InvalidIdentifier:
        return
    target = canonical[len(norm.url):]
    as_written = _raw_get(norm.url, path + query)[2]
    as_requested = _raw_get(norm.url, target)[2]
    assert as_written == as_requested == server_view(target)
    if url_matches_prefix(canonical, f"{norm.url}/allowed/"):
        # (the server's view drops a trailing slash: "/allowed/" is "/allowed")
        assert (as_requested + "/").startswith("/allowed/"), (url, canonical, as_requested)


# Served as /private/ by a server that decodes any number of times, folds overlong UTF-8
# or applies NFKC; each is under /allowed/ as a string.
FOLDING_ATTACKS = [
    "/allowed/%25252e%25252e/private/w.pt",        # triple-encoded '.'
    "/allowed/%2525252e%2525252e/private/w.pt",    # four times
    "/allowed/..%25252fprivate/w.pt",              # a triple-encoded '/'
    "/allowed/%C0%AE%C0%AE/private/w.pt",          # overlong UTF-8 '.'
    "/allowed/..%C0%AFprivate/w.pt",               # overlong UTF-8 '/'
    "/allowed/%EF%BC%8E%EF%BC%8E/private/w.pt",    # fullwidth '.' (U+FF0E)
    "/allowed/%E2%80%A5/private/w.pt",             # two-dot leader (U+2025) is '..'
    "/allowed/..%EF%BC%8Fprivate/w.pt",            # fullwidth '/' (U+FF0F)
]


@pytest.mark.parametrize("attack", FOLDING_ATTACKS)
def test_multiply_encoded_overlong_and_folded_spellings_are_refused(
        attack: str, checkpoint: bytes, tmp_path: Path, cache_dir: Path) -> None:
    server = NormalisingServer(folding=True)
    server.files["/allowed/w.pt"] = checkpoint
    server.files["/private/w.pt"] = SECRET
    try:
        url = server.url + attack
        assert _old_prefix_check(url, f"{server.url}/allowed/")
        assert _raw_get(server.url, attack)[:2] == (200, SECRET), "the attack works unguarded"
        server.log.clear()
        with pytest.raises(InvalidIdentifier):
            canonical_url(url)
        fetcher = Fetcher(_policy(tmp_path / "p.toml", server.url), cache_dir=cache_dir,
                          http=FAST)
        with pytest.raises((InvalidIdentifier, PolicyViolation)):
            fetcher.fetch_url(url)
        assert server.log == [] and leftovers(cache_dir) == []
        # Ordinary escapes still pass: a UTF-8 name, a literal '%' before non-hex text.
        for fine in ("/allowed/caf%C3%A9.pt", "/allowed/100%25off.pt", "/allowed/w.pt?q=%2541"):
            canonical_url(server.url + fine)
    finally:
        server.close()
