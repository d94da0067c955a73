"""An overall deadline per download and per API call: a server that trickles bytes (each
read well within the per-read timeout) ends in a FetchError naming the URL and the setting,
with nothing left in the cache. No timing is asserted: only how it ends."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from safehub.errors import FetchError
from safehub.fetch import Fetcher, HttpSettings
from tests.fetch.helpers import leftovers

# A per-read timeout the trickle never hits, and a deadline it always does.
# min_rate is low: the allowance grows with the bytes received, never with the announced
# length ("huge-length" announces 10 MB, 10000 s at this rate, and trickles).
TRICKLE = HttpSettings(timeout=5.0, retries=3, backoff=0.01, max_backoff=0.05, deadline=1.0,
                       min_rate=1000)


class _Trickle:
    """Answers every GET slowly, one byte every 0.2 s: a 200 body of ``size`` bytes (with
    Content-Length or without one), the headers themselves, or a 500's error body. The API
    paths answer the same way."""

    def __init__(self, mode: str, size: int = 200):
        owner = self
        self.requests = 0

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                owner.requests += 1
                with contextlib.suppress(OSError):  # the client gave up
                    if mode == "headers":
                        self.wfile.write(b"HTTP/1.0 200 OK\r\nX-Slow: ")
                        for _ in range(size):
                            self.wfile.write(b"a")
                            self.wfile.flush()
                            time.sleep(0.2)
                        return
                    self.send_response(500 if mode == "error-body" else 200)
                    if mode != "no-length":
                        announced = 10_000_000 if mode == "huge-length" else size
                        self.send_header("Content-Length", str(announced))
                    self.end_headers()
                    for _ in range(size):
                        self.wfile.write(b"{")
                        self.wfile.flush()
                        time.sleep(0.2)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.api = f"{self.url}/api"
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _policy(path: Path, server: _Trickle) -> Path:
    path.write_text(
        'schema = 1\nname = "test"\nextends = "default"\n'
        'loosen = ["downloads.allow_http_loopback", "downloads.github_api", "trust.owners", '
        '"downloads.allowed_urls"]\n[trust]\nowners = ["acme"]\n'
        f'[downloads]\nallow_http_loopback = true\ngithub_api = "{server.api}"\n'
        f'allowed_urls = ["{server.url}/"]\n', encoding="utf-8")
    return path


@pytest.fixture(params=["length", "no-length", "huge-length", "headers", "error-body"])
def trickle(request: pytest.FixtureRequest) -> Iterator[_Trickle]:
    server = _Trickle(request.param)
    yield server
    server.close()


def test_trickling_download_hits_the_deadline(trickle: _Trickle, tmp_path: Path,
                                              cache_dir: Path) -> None:
    fetcher = Fetcher(_policy(tmp_path / "p.toml", trickle), cache_dir=cache_dir, http=TRICKLE)
    url = f"{trickle.url}/w.pt"
    with pytest.raises(FetchError) as err:
        fetcher.fetch_url(url)
    assert url in err.value.message and "HttpSettings.deadline" in err.value.message
    assert "deadline" in (err.value.fix or "")
    assert trickle.requests == 1, "a missed deadline is not retried"
    assert leftovers(cache_dir) == []


def test_trickling_api_call_hits_the_deadline(trickle: _Trickle, tmp_path: Path,
                                              cache_dir: Path) -> None:
    fetcher = Fetcher(_policy(tmp_path / "p.toml", trickle), cache_dir=cache_dir, http=TRICKLE)
    with pytest.raises(FetchError) as err:
        fetcher.fetch_repo("acme/net:main")
    assert f"{trickle.api}/repos/acme/net" in err.value.diagnostics()
    assert "HttpSettings.deadline" in err.value.diagnostics()
    assert leftovers(cache_dir) == []


# --- the deadline is policy: downloads.deadline_s and downloads.min_rate_kb_s -----------------


def _short_policy(path: Path, server: _Trickle) -> Path:
    """The test policy with a 1 s deadline set in the policy itself (no HttpSettings)."""
    text = _policy(path, server).read_text(encoding="utf-8")
    path.write_text(text + "deadline_s = 1\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("mode", ["length", "headers"])
def test_policy_deadline_ends_a_trickling_download(mode: str, tmp_path: Path,
                                                   cache_dir: Path) -> None:
    server = _Trickle(mode)
    try:
        # No deadline in HttpSettings: only the policy bounds the request.
        fetcher = Fetcher(_short_policy(tmp_path / "p.toml", server), cache_dir=cache_dir,
                          http=HttpSettings(timeout=5.0, retries=1, backoff=0.01))
        url = f"{server.url}/w.pt"
        with pytest.raises(FetchError) as err:
            fetcher.fetch_url(url)
    finally:
        server.close()
    message = err.value.message
    assert url in message and "downloads.deadline_s" in message, message
    assert f"{tmp_path / 'p.toml'}" in message, "the error says where the deadline was set"
    assert "downloads.deadline_s" in (err.value.fix or "")
    assert leftovers(cache_dir) == [], "no partial file stays in the cache"


def test_policy_deadline_ends_a_trickling_api_call(tmp_path: Path, cache_dir: Path) -> None:
    server = _Trickle("length")
    try:
        fetcher = Fetcher(_short_policy(tmp_path / "p.toml", server), cache_dir=cache_dir,
                          http=HttpSettings(timeout=5.0, retries=1, backoff=0.01))
        with pytest.raises(FetchError) as err:
            fetcher.fetch_repo("acme/net:main")
    finally:
        server.close()
    assert "downloads.deadline_s" in err.value.diagnostics()
    assert leftovers(cache_dir) == []


def test_http_settings_only_tighten_the_policy_deadline(tmp_path: Path) -> None:
    from safehub._fetch.http import transfer_limits
    from safehub.policy import load_policy

    strict = load_policy("strict")
    loose = transfer_limits(HttpSettings(deadline=10_000.0, min_rate=1.0), strict)
    assert (loose.deadline, loose.min_rate) == (120.0, 64 * 1024.0)
    assert loose.deadline_from.startswith("downloads.deadline_s")
    tight = transfer_limits(HttpSettings(deadline=2.0, min_rate=1 << 20), strict)
    assert (tight.deadline, tight.min_rate) == (2.0, float(1 << 20))
    assert tight.deadline_from == "HttpSettings.deadline"


@pytest.mark.parametrize("setting, loosen", [
    ("deadline_s = 121", "downloads.deadline_s"),
    ("deadline_s = 1e9", "downloads.deadline_s"),
    ("min_rate_kb_s = 63", "downloads.min_rate_kb_s"),
    ("min_rate_kb_s = 1", "downloads"),
])
def test_raising_the_deadline_of_strict_needs_loosen(setting: str, loosen: str,
                                                     tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from safehub.cli import main

    key = f"downloads.{setting.split(' ')[0]}"
    path = tmp_path / "child.toml"
    path.write_text(f'schema = 1\nextends = "strict"\n[downloads]\n{setting}\n',
                    encoding="utf-8")
    assert main(["policy", "check", str(path)]) != 0
    out = capsys.readouterr().out
    assert "INVALID" in out and key in out, out
    path.write_text(f'schema = 1\nextends = "strict"\nloosen = ["{loosen}"]\n[downloads]\n'
                    f'{setting}\n', encoding="utf-8")
    assert main(["policy", "check", str(path)]) == 0, capsys.readouterr().out
    # Tightening needs nothing.
    path.write_text('schema = 1\nextends = "strict"\n[downloads]\ndeadline_s = 5\n'
                    'min_rate_kb_s = 1024\n', encoding="utf-8")
    assert main(["policy", "check", str(path)]) == 0, capsys.readouterr().out


@pytest.mark.parametrize("value", ['"300"', "true", "inf", "nan", "0", "-1"])
def test_deadline_values_are_strictly_typed(value: str, tmp_path: Path) -> None:
    from safehub.errors import PolicyError
    from safehub.policy import load_policy

    path = tmp_path / "p.toml"
    path.write_text(f"schema = 1\n[downloads]\ndeadline_s = {value}\n", encoding="utf-8")
    with pytest.raises(PolicyError):
        load_policy(path)
