"""Fixtures for the sandbox tests: one shared sandbox (zygote) per worker, plain
torch.hub in a throwaway process for the "attack succeeds without safehub" half,
repos generated from source text, loopback TCP/UDP/HTTP servers."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import secrets
import socket
import subprocess
import sys
import textwrap
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from safehub.errors import PolicyViolation
from safehub.sandbox import Layer, Sandbox, SandboxLimits

HERE = Path(__file__).resolve().parent
SECRET_VAR = "SAFEHUB_TEST_SECRET"
# Short limits: a hostile test should end in about a second.
FAST = SandboxLimits(timeout_s=20, memory_mb=4096, cpu_s=20, max_processes=16)


def everything_but(*keep: Layer) -> frozenset[Layer]:
    """The layers to skip so that only ``keep`` (and what they need) is applied."""
    return frozenset(Layer) - set(keep)


@pytest.fixture(scope="session")
def secret() -> Iterator[str]:
    """A secret in the test process's environment, as a token or cloud key would be."""
    value = f"hunter2-{secrets.token_hex(8)}"
    old = os.environ.get(SECRET_VAR)
    os.environ[SECRET_VAR] = value
    yield value
    if old is None:
        os.environ.pop(SECRET_VAR, None)
    else:
        os.environ[SECRET_VAR] = old


@pytest.fixture(scope="session")
def sandbox(secret: str) -> Iterator[Sandbox]:
    """One zygote per test worker; every request forks a fresh child from it."""
    with Sandbox() as sb:
        yield sb


def make_repo(root: Path, hubconf: str, files: dict[str, str | bytes] | None = None) -> Path:
    """A repo folder with ``hubconf.py`` (dedented) and extra files."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "hubconf.py").write_text(textwrap.dedent(hubconf))
    for name, content in (files or {}).items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(textwrap.dedent(content))
    return root


@dataclass
class PlainOutcome:
    """What plain torch.hub did in its throwaway process."""

    exit: int | None
    timed_out: bool
    result: dict[str, Any] | None
    runner_died: bool = False
    tensors: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.result and self.result.get("ok"))


class PlainHub:
    """Plain torch.hub in a forked child of a runner process started with the test's
    environment (secret included). A request that kills the runner is reported as
    ``runner_died``; the next request starts a new runner."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.proc: subprocess.Popen[str] | None = None
        self.count = 0

    @property
    def pid(self) -> int:
        self._start()
        assert self.proc is not None
        return self.proc.pid

    def _start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        self.proc = subprocess.Popen([sys.executable, str(HERE / "_plainhub.py")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=dict(os.environ), cwd=self.workdir)
        assert self.proc.stdout is not None
        json.loads(self.proc.stdout.readline())

    def run(self, op: str, repo: Path, entry: str | None = None, *,
            kwargs: dict[str, Any] | None = None, torch_home: Path | None = None,
            timeout: float = 30, probe: bool = False) -> PlainOutcome:
        self._start()
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        self.count += 1
        status = self.workdir / f"status-{self.count}.json"
        out = self.workdir / f"out-{self.count}.safetensors"
        home = torch_home or self.workdir / f"torch-home-{self.count}"
        request = {"op": op, "repo": str(repo), "entry": entry, "kwargs": kwargs or {},
                   "torch_home": str(home), "status": str(status), "out": str(out),
                   "timeout": timeout, "probe": probe}
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:
            self.proc.wait(timeout=10)
            result = json.loads(status.read_text()) if status.exists() else None
            return PlainOutcome(None, False, result, runner_died=True)
        answer = json.loads(line)
        outcome = PlainOutcome(answer["exit"], answer["timed_out"], answer["result"])
        if out.exists():
            from safetensors.torch import load_file

            outcome.tensors = load_file(str(out))
        return outcome

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture(scope="session")
def plain_hub(secret: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlainHub]:
    hub = PlainHub(tmp_path_factory.mktemp("plainhub"))
    yield hub
    hub.close()


def tensor_bytes(t: Any) -> bytes:
    """The exact bytes of a tensor (NaN-safe equality)."""
    import torch

    return bytes(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy()) if t.numel() \
        else b""


def assert_same_tensors(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Same keys, dtypes, shapes and bytes."""
    assert sorted(got) == sorted(want)
    for key, expected in want.items():
        actual = got[key]
        assert (actual.dtype, tuple(actual.shape)) == (expected.dtype, tuple(expected.shape)), key
        assert tensor_bytes(actual) == tensor_bytes(expected), key


# --- loopback servers ---------------------------------------------------------------------


class TcpSink:
    """A TCP server on 127.0.0.1 that records what it receives."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.received = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    while chunk := conn.recv(4096):
                        self.received += chunk

    def close(self) -> None:
        self.sock.close()


class UdpSink:
    """A UDP socket on 127.0.0.1 that records datagrams."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]

    def received(self) -> bytes:
        self.sock.settimeout(0.3)
        data = b""
        with contextlib.suppress(OSError):
            while True:
                data += self.sock.recv(4096)
        return data

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def tcp_sink() -> Iterator[TcpSink]:
    sink = TcpSink()
    yield sink
    sink.close()


@pytest.fixture
def udp_sink() -> Iterator[UdpSink]:
    sink = UdpSink()
    yield sink
    sink.close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over HTTP on 127.0.0.1: (folder, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


class TestBroker:
    """A broker for tests: downloads URLs under one prefix into a cache (the real one
    applies the policy, pins and scans); maps repo names to local folders."""

    __test__ = False

    def __init__(self, cache: Path, allowed_prefix: str, repos: dict[str, Path] | None = None):
        self.cache = cache
        self.allowed_prefix = allowed_prefix
        self.repos = repos or {}
        self.calls: list[str] = []

    def fetch(self, url: str, *, file_name: str | None, check_hash: bool) -> Path:
        self.calls.append(url)
        if not url.startswith(self.allowed_prefix):
            raise PolicyViolation(f"download not allowed: {url}", subject=url,
                                  fix="add the prefix to [downloads] allowed_urls")
        self.cache.mkdir(parents=True, exist_ok=True)
        target = self.cache / (file_name or url.rsplit("/", 1)[-1])
        with urllib.request.urlopen(url, timeout=10) as response:
            target.write_bytes(response.read())
        return target

    def fetch_repo(self, repo: str, *, force_reload: bool) -> Path:
        self.calls.append(repo)
        if repo not in self.repos:
            raise PolicyViolation(f"repo not allowed: {repo}", subject=repo)
        return self.repos[repo]
