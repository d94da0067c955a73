"""Remote scans keep the fetch layer's overall deadline (deadline + bytes received /
min_rate): a server that trickles its headers, a range body or an API listing ends in an
unreadable entry, never in a scan that runs for hours. No timing is asserted: without the
deadline these tests would not end (the servers trickle for ~100000 s)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from safehub._fetch.http import HttpSettings
from safehub._remote.scan import scan_remote
from safehub.findings import Verdict
from safehub.policy import load_policy
from tests.remote.conftest import write_policy

SHORT = HttpSettings(deadline=1.0, min_rate=1000, timeout=30.0)
BODY = (b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-99999/100000\r\n"
        b"Content-Length: 100000\r\nAccept-Ranges: bytes\r\n\r\n")
LISTING = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"


class Trickler:
    """Answers every request with ``head`` at once, then one byte every 0.2 s."""

    def __init__(self, head: bytes, byte: bytes) -> None:
        self.head, self.byte = head, byte
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.stopped = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            with contextlib.suppress(OSError):
                conn, _ = self.sock.accept()
                threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            conn.recv(65536)
            conn.sendall(self.head)
            while not self.stopped.is_set():
                conn.sendall(self.byte)
                time.sleep(0.2)

    def close(self) -> None:
        self.stopped.set()
        self.sock.close()


@pytest.fixture(params=["headers", "body", "listing"])
def trickle(request: pytest.FixtureRequest) -> Iterator[tuple[str, Trickler]]:
    mode = request.param
    head = {"headers": b"HTTP/1.1 206 Partial Content\r\nX-Slow: ", "body": BODY,
            "listing": LISTING}[mode]
    server = Trickler(head, b"a" if mode == "headers" else b" " if mode == "listing" else b"\x80")
    yield mode, server
    server.close()


def test_a_trickling_server_ends_the_remote_scan_at_the_deadline(
        trickle: tuple[str, Trickler], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mode, server = trickle
    policy = load_policy(write_policy(tmp_path / "p.toml", server.url))
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    spec = "hf://acme/detector" if mode == "listing" else f"{server.url}/m.pt"
    result = scan_remote([spec], policy=policy, options=policy.scan_options(), http=SHORT)
    (report,) = result.report.files
    assert report.verdict is not Verdict.CLEAN and report.error, report
    assert "overall deadline" in report.error and "HttpSettings.deadline" in report.error


@pytest.mark.parametrize("step", ["listing", "read"])
def test_a_trickling_s3_endpoint_ends_at_the_deadline(
        step: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore's timeouts are per socket read, which a byte every 0.2 s never trips: the
    deadline is what ends the listing (fs.info) and the range reads (cat_ranges)."""
    pytest.importorskip("s3fs", reason="the S3 tests need the s3 extra (dev extra)")
    from safehub._remote.scan import RemoteItem, scan_item

    server = Trickler(b"HTTP/1.1 200 OK\r\nX-Slow: ", b"a")
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        policy = load_policy(write_policy(tmp_path / "p.toml", server.url))
        if step == "listing":
            result = scan_remote(["s3://models/m.pt"], policy=policy,
                                 options=policy.scan_options(), http=SHORT)
            (report,) = result.report.files
        else:  # listed already: straight to the reads
            item = RemoteItem("s3://models/m.pt", "s3", bucket="models", key="m.pt",
                              size=5 << 20, endpoint=server.url)
            report, _ = scan_item(item, policy, policy.scan_options(), http=SHORT)
    finally:
        server.close()
    assert report.verdict is not Verdict.CLEAN and report.error, report
    assert "overall deadline" in report.error and "HttpSettings.deadline" in report.error


@pytest.mark.parametrize("command", ["scan", "audit"])
def test_deadline_flag_tightens_the_policy_for_a_remote_scan(
        command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--deadline`` is the policy's downloads.deadline_s for one run: it ends a trickle
    that the policy's 300 s would let run, and the error names the flag."""
    from safehub.cli import main

    server = Trickler(BODY, b"\x80")
    try:
        policy = write_policy(tmp_path / "p.toml", server.url)
        extra = ["--no-state"] if command == "audit" else []
        code = main([command, f"{server.url}/m.pt", "--policy", str(policy), "--deadline",
                     "1", "-f", "json", *extra])
    finally:
        server.close()
    captured = capsys.readouterr()
    assert code == 2, captured
    assert "downloads.deadline_s (--deadline)" in captured.out + captured.err, captured


def test_deadline_flag_cannot_raise_the_policy_deadline(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from safehub.cli import main

    server = Trickler(BODY, b"\x80")
    try:
        policy = write_policy(tmp_path / "p.toml", server.url)
        policy.write_text(policy.read_text(encoding="utf-8") + "deadline_s = 1\n",
                          encoding="utf-8")
        code = main(["scan", f"{server.url}/m.pt", "--policy", str(policy), "--deadline",
                     "100000", "-f", "json"])
    finally:
        server.close()
    captured = capsys.readouterr()
    assert code == 2, captured
    assert f"downloads.deadline_s ({policy}" in captured.out, captured.out
    assert "not below the policy's downloads.deadline_s" in captured.err


@pytest.mark.parametrize("value", ["0", "-3", "nan", "inf", "soon"])
def test_deadline_flag_must_be_a_positive_number(
        value: str, capsys: pytest.CaptureFixture[str]) -> None:
    from safehub.cli import main

    assert main(["scan", "https://example.com/m.pt", "--deadline", value]) == 2
    assert "usage error: argument --deadline" in capsys.readouterr().err
