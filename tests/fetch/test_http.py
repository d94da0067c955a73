"""Downloads against a misbehaving server: each failure is a clear error and leaves nothing."""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from safehub.errors import FetchError, IntegrityError, PolicyViolation
from safehub.fetch import Fetcher, HttpSettings
from tests.fetch.fakehub import FakeHub, Fault, self_signed_cert
from tests.fetch.helpers import FAST, leftovers, write_policy


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_download_is_cached_by_url_and_scanned(
        hub: FakeHub, make_fetcher: Callable[..., Fetcher], checkpoint: bytes,
        cache_dir: Path) -> None:
    url = hub.add_file("/models/net.pt", checkpoint)
    info = make_fetcher().fetch_url(url)
    assert (info.sha256, info.size, info.from_cache) == (sha256(checkpoint), len(checkpoint),
                                                         False)
    assert info.path.read_bytes() == checkpoint
    assert info.report.format != "unknown" and info.file_decision.allowed
    assert info.path.stat().st_mode & 0o222 == 0, "cached files are read-only"
    again = make_fetcher().fetch_url(url)
    assert again.from_cache and hub.count("/models/") == 1
    assert leftovers(cache_dir) == sorted(
        str(p.relative_to(cache_dir)) for p in (cache_dir / "files").rglob("*"))


def test_same_basename_different_urls_do_not_collide(
        hub: FakeHub, make_fetcher: Callable[..., Fetcher], checkpoint: bytes) -> None:
    import torch

    from tests.fetch.helpers import torch_bytes

    other = torch_bytes({"weight": torch.zeros(2)})
    a = make_fetcher().fetch_url(hub.add_file("/a/model.pt", checkpoint))
    b = make_fetcher().fetch_url(hub.add_file("/b/model.pt", other))
    assert a.path != b.path
    assert a.path.read_bytes() == checkpoint and b.path.read_bytes() == other


def test_5xx_is_retried_with_backoff_then_succeeds(
        hub: FakeHub, make_fetcher: Callable[..., Fetcher], checkpoint: bytes) -> None:
    url = hub.add_file("/flaky.pt", checkpoint, Fault(statuses=[503, 502]))
    assert make_fetcher().fetch_url(url).sha256 == sha256(checkpoint)
    assert hub.count("/flaky.pt") == 3


def test_5xx_that_persists_fails_after_the_retries(
        hub: FakeHub, make_fetcher: Callable[..., Fetcher], checkpoint: bytes,
        cache_dir: Path) -> None:
    url = hub.add_file("/down.pt", checkpoint, Fault(always_status=500))
    with pytest.raises(FetchError) as err:
        make_fetcher().fetch_url(url)
    assert "after 3 attempts" in err.value.message and "HTTP 500" in err.value.message
    assert hub.count("/down.pt") == 3
    assert leftovers(cache_dir) == []


def test_404_is_not_retried(hub: FakeHub, make_fetcher: Callable[..., Fetcher],
                            cache_dir: Path) -> None:
    with pytest.raises(FetchError) as err:
        make_fetcher().fetch_url(f"{hub.url}/missing.pt")
    assert "HTTP 404" in err.value.message and err.value.subject.endswith("/missing.pt")
    assert hub.count("/missing.pt") == 1
    assert leftovers(cache_dir) == []


def test_truncated_body_resumes_with_range(
        hub: FakeHub, make_fetcher: Callable[..., Fetcher], big_checkpoint: bytes) -> None:
    url = hub.add_file("/big.pt", big_checkpoint, Fault(truncate=1, ranges=True))
    info = make_fetcher().fetch_url(url)
    assert info.sha256 == sha256(big_checkpoint)
    requests = hub.requests_to("/big.pt")
    assert len(requests) == 2
    assert requests[1].headers.get("range") == f"bytes={len(big_checkpoint) // 2}-"
    assert requests[1].headers.get("if-range"), "the resume is conditional on the same file"


def test_truncated_body_without_range_support_starts_over(
        hub: FakeHub, make_fetcher: Callable[..., Fetcher], big_checkpoint: bytes) -> None:
    url = hub.add_file("/big.pt", big_checkpoint, Fault(truncate=1))
    assert make_fetcher().fetch_url(url).sha256 == sha256(big_checkpoint)
    assert [r.headers.get("range") for r in hub.requests_to("/big.pt")] == [None, None]


def test_always_truncated_body_fails_and_leaves_nothing(
        hub: FakeHub, make_fetcher: Callable[..., Fetcher], big_checkpoint: bytes,
        cache_dir: Path) -> None:
    url = hub.add_file("/cut.pt", big_checkpoint, Fault(truncate=99))
    with pytest.raises(FetchError) as err:
        make_fetcher().fetch_url(url)
    assert "truncated" in err.value.message
    assert leftovers(cache_dir) == []


def test_wrong_hash_is_refused_and_nothing_is_cached(
        tmp_path: Path, hub: FakeHub, make_fetcher: Callable[..., Fetcher], checkpoint: bytes,
        cache_dir: Path) -> None:
    url = hub.add_file("/pinned.pt", checkpoint)
    policy = write_policy(tmp_path / "pins.toml", hub,
                          body=f'[downloads.pins]\n"{url}" = "{"ab" * 32}"\n')
    with pytest.raises(IntegrityError) as err:
        make_fetcher(policy=policy).fetch_url(url)
    assert sha256(checkpoint) in err.value.message and "ab" * 32 in err.value.message
    assert leftovers(cache_dir) == []
    good = write_policy(tmp_path / "good.toml", hub,
                        body=f'[downloads.pins]\n"{url}" = "{sha256(checkpoint)}"\n')
    assert make_fetcher(policy=good).fetch_url(url).sha256 == sha256(checkpoint)


def test_torch_file_name_hash_prefix_is_checked_with_check_hash(
        hub: FakeHub, make_fetcher: Callable[..., Fetcher], checkpoint: bytes,
        cache_dir: Path) -> None:
    good = hub.add_file(f"/net-{sha256(checkpoint)[:8]}.pt", checkpoint)
    bad = hub.add_file("/net-deadbeef.pt", checkpoint)
    fetcher = make_fetcher()
    assert fetcher.fetch_url(good, check_hash=True).sha256 == sha256(checkpoint)
    with pytest.raises(IntegrityError) as err:
        fetcher.fetch_url(bad, check_hash=True)
    assert "deadbeef" in err.value.message
    assert fetcher.fetch_url(bad, check_hash=False).size == len(checkpoint)


@pytest.mark.parametrize("no_length", [False, True], ids=["content-length", "streamed"])
def test_oversized_body_is_refused(
        tmp_path: Path, hub: FakeHub, make_fetcher: Callable[..., Fetcher],
        big_checkpoint: bytes, cache_dir: Path, no_length: bool) -> None:
    url = hub.add_file("/huge.pt", big_checkpoint * 2, Fault(no_length=no_length))
    policy = write_policy(tmp_path / "small.toml", hub, body="max_size_mb = 1\n")
    with pytest.raises(FetchError) as err:
        make_fetcher(policy=policy).fetch_url(url)
    assert "limit" in err.value.message and "max_size_mb" in (err.value.fix or "")
    assert leftovers(cache_dir) == []


def test_redirect_to_a_host_outside_the_allowlist_is_refused(
        hub: FakeHub, other_hub: FakeHub, make_fetcher: Callable[..., Fetcher],
        checkpoint: bytes, cache_dir: Path) -> None:
    target = other_hub.add_file("/evil.pt", checkpoint)
    url = hub.add_file("/jump.pt", b"", Fault(redirect=target))
    with pytest.raises(PolicyViolation) as err:
        make_fetcher().fetch_url(url)
    assert target in err.value.message and "allowed_urls" in (err.value.fix or "")
    assert other_hub.count() == 0, "the disallowed host is never contacted"
    assert leftovers(cache_dir) == []


@pytest.mark.parametrize("url", [
    "file:///etc/passwd", "ftp://127.0.0.1/x.pt", "data:,hello", "gopher://127.0.0.1/x",
    "http://example.com/model.pt", "//127.0.0.1/x.pt", "x.pt",
])
def test_other_schemes_and_remote_plain_http_are_refused(
        url: str, make_fetcher: Callable[..., Fetcher], cache_dir: Path) -> None:
    with pytest.raises((PolicyViolation, FetchError)):
        make_fetcher().fetch_url(url)
    assert leftovers(cache_dir) == []


def test_slow_server_times_out(hub: FakeHub, make_fetcher: Callable[..., Fetcher],
                               checkpoint: bytes, cache_dir: Path) -> None:
    url = hub.add_file("/slow.pt", checkpoint, Fault(delay=3.0))
    fetcher = make_fetcher(http=HttpSettings(timeout=0.3, retries=1, backoff=0.01))
    with pytest.raises(FetchError) as err:
        fetcher.fetch_url(url)
    assert "timed out" in err.value.message
    assert leftovers(cache_dir) == []


@pytest.fixture
def tls_hub(tmp_path: Path) -> Iterator[tuple[FakeHub, ssl.SSLContext]]:
    cert, key = self_signed_cert(tmp_path)
    server = FakeHub("127.0.0.1", tls=(cert, key))
    yield server, ssl.create_default_context(cafile=str(cert))
    server.close()


def test_https_to_http_redirect_is_refused_even_to_an_allowed_loopback(
        tmp_path: Path, hub: FakeHub, tls_hub: tuple[FakeHub, ssl.SSLContext],
        checkpoint: bytes, cache_dir: Path) -> None:
    secure, context = tls_hub
    plain = hub.add_file("/plain.pt", checkpoint)
    url = secure.add_file("/model.pt", checkpoint)
    downgrade = secure.add_file("/down.pt", b"", Fault(redirect=plain))
    policy = write_policy(tmp_path / "tls.toml", hub, secure)
    fetcher = Fetcher(policy, cache_dir=cache_dir,
                      http=HttpSettings(timeout=5, retries=0, ssl_context=context))
    assert fetcher.fetch_url(url).sha256 == sha256(checkpoint), "https works"
    with pytest.raises(FetchError) as err:
        fetcher.fetch_url(downgrade)
    assert "https to" in err.value.message
    assert hub.count("/plain.pt") == 0, "the plain-http target is never contacted"


def test_untrusted_certificate_is_an_error_not_a_retry(
        tmp_path: Path, hub: FakeHub, tls_hub: tuple[FakeHub, ssl.SSLContext],
        checkpoint: bytes, cache_dir: Path) -> None:
    secure, _ = tls_hub
    url = secure.add_file("/model.pt", checkpoint)
    policy = write_policy(tmp_path / "tls.toml", hub, secure)
    fetcher = Fetcher(policy, cache_dir=cache_dir, http=FAST)  # system CAs only
    with pytest.raises(FetchError) as err:
        fetcher.fetch_url(url)
    assert "TLS" in err.value.message
    assert secure.count("/model.pt") == 0


def test_unsafe_file_is_denied_after_the_scan(
        hub: FakeHub, make_fetcher: Callable[..., Fetcher], marker_dir: Path) -> None:
    import pickle

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            import os

            return (os.system, (f"touch {marker_dir}/pwned",))

    url = hub.add_file("/evil.pkl", pickle.dumps(Payload()))
    with pytest.raises(PolicyViolation) as err:
        make_fetcher().fetch_url(url)
    assert "SH100" in err.value.diagnostics()
    assert not (marker_dir / "pwned").exists()


@pytest.mark.parametrize("location", ["/cdn/mod\u00e8le.pt?X-Amz-Signature=SIGSECRET0123",
                                      "/cdn/mo del.pt?token=TOKSECRET89"])
def test_a_refused_relative_redirect_does_not_show_its_credentials(
        location: str, hub: FakeHub, make_fetcher: Callable[..., Fetcher],
        cache_dir: Path) -> None:
    # A relative Location (a CDN's signed query, a raw non-ASCII file name) holds no '://':
    # quoted as received in the refusal, its credentials were not redacted.
    url = hub.add_file("/jump.pt", b"", Fault(redirect=location))
    with pytest.raises(FetchError) as err:
        make_fetcher().fetch_url(url)
    text = err.value.diagnostics()
    assert "refused a redirect" in text
    assert "SECRET" not in text, text
    assert leftovers(cache_dir) == []
