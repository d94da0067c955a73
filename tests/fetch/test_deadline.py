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
