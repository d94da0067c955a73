"""Servers on 127.0.0.1 and a policy that lets safehub read from them (and nothing else)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.remote.servers import RangeServer

CORPUS = Path(__file__).resolve().parents[2] / ".." / "shared" / "corpus"


def corpus_files() -> list[Path]:
    root = CORPUS.resolve()
    if not root.is_dir():
        return []
    return sorted(p for sub in ("benign", "malicious", "realworld")
                  for p in (root / sub).rglob("*") if p.is_file())


def write_policy(path: Path, *urls: str) -> Path:
    allowed = ", ".join(f'"{u.rstrip("/")}/"' for u in urls)
    path.write_text('schema = 1\nname = "remote-test"\nextends = "default"\n'
                    'loosen = ["downloads.allow_http_loopback", "downloads.allowed_urls"]\n'
                    f'[downloads]\nallow_http_loopback = true\nallowed_urls = [{allowed}]\n',
                    encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SAFEHUB_POLICY", "SAFEHUB_OFFLINE", "HF_ENDPOINT", "AWS_ENDPOINT_URL",
                "AWS_ENDPOINT_URL_S3", "HF_HOME", "HF_HUB_CACHE", "HF_TOKEN",
                "HUGGING_FACE_HUB_TOKEN", "HF_HUB_DISABLE_IMPLICIT_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-hf-token"))  # not the user's
    monkeypatch.setenv("SAFEHUB_NO_PROGRESS", "1")
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture(scope="module")
def server() -> Iterator[RangeServer]:
    srv = RangeServer()
    yield srv
    srv.close()


@pytest.fixture
def policy(tmp_path: Path, server: RangeServer) -> Path:
    return write_policy(tmp_path / "policy.toml", server.url)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's standalone S3-compatible server on 127.0.0.1."""
    pytest.importorskip("moto.server", reason="the S3 tests need moto[server] (dev extra)")
    pytest.importorskip("s3fs", reason="the S3 tests need s3fs (the s3 extra)")
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "moto.server"]
    with open(log, "wb") as out:
        proc = subprocess.Popen([*cmd, "-H", "127.0.0.1", "-p", str(port)], stdout=out,
                                stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"moto_server exited: {log.read_text()[-2000:]}")
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def s3_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return moto_endpoint
