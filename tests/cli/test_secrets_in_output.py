"""Credentials inside URLs never reach a report, a log line, an error or a journal.

Two ways a credential ends up in a URL safehub shows: the user types one
(``https://user:token@host/...``, refused as malformed, but echoed) and a server redirects to
a signed URL (``?X-Amz-Signature=...&X-Amz-Security-Token=...``, how the Hugging Face Hub
and S3 hand out private files) that the policy then denies, quoting it. CI logs and uploaded
reports are often public. Real ``python -m safehub`` processes and a real server on
127.0.0.1; every output format; SARIF validated against the OASIS schema, with the remote
file located by its own URL (not as a path under the working directory).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SHARED, CliResult, run_module
from tests.remote.conftest import write_policy

SECRETS = ("SIGSECRET0123", "STSSECRET4567", "TOKSECRET89", "ghp_USERSECRET")


@pytest.fixture
def redirecting() -> Iterator[str]:
    """``/model.bin`` redirects to a signed URL on another port (outside the policy)."""
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            port = self.server.server_address[1] + 1  # type: ignore[index]
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{port}/cdn/model.bin?"
                             f"X-Amz-Signature={SECRETS[0]}&X-Amz-Security-Token="
                             f"{SECRETS[1]}&Expires=1")
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.upper().endswith("_PROXY") and not k.startswith(("HF_", "SAFEHUB_"))}
    env.update(NO_PROXY="127.0.0.1", XDG_STATE_HOME=str(tmp_path / "state"),
               XDG_CACHE_HOME=str(tmp_path / "cache"), SAFEHUB_NO_PROGRESS="1",
               HF_TOKEN_PATH=str(tmp_path / "no-token"))
    return env


def _assert_no_secret(where: str, text: str) -> None:
    leaked = [s for s in SECRETS if s in text]
    assert not leaked, f"{where} shows {leaked}: {text}"


def _sarif_valid(text: str) -> dict[str, Any]:
    jsonschema = pytest.importorskip("jsonschema")
    schema_path = SHARED / "schemas" / "sarif-schema-2.1.0.json"
    if not schema_path.is_file():
        pytest.skip(f"SARIF schema not found at {schema_path}")
    doc: dict[str, Any] = json.loads(text)
    jsonschema.validate(doc, json.loads(schema_path.read_text()))
    return doc


def _uris(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [loc["physicalLocation"]["artifactLocation"]
            for result in doc["runs"][0]["results"] for loc in result["locations"]]


def _run(tmp_path: Path, *args: object) -> CliResult:
    return run_module(*map(str, args), env=_env(tmp_path), cwd=tmp_path)


@pytest.mark.parametrize("command", ["scan", "audit"])
def test_a_signed_redirect_target_is_never_shown(tmp_path: Path, redirecting: str,
                                                 command: str) -> None:
    policy = write_policy(tmp_path / "policy.toml", redirecting)
    url = f"{redirecting}/model.bin"
    extra = ["--no-state"] if command == "audit" else []
    for fmt in ("text", "json", "sarif"):
        result = _run(tmp_path, command, url, "--policy", policy, "-f", fmt, *extra)
        assert result.code == 2, result.err  # denied hop: not scanned
        _assert_no_secret(f"{command} {fmt} stdout", result.out)
        _assert_no_secret(f"{command} {fmt} stderr", result.err)
        assert "X-Amz-Signature=***" in result.out + result.err  # redacted, still explained
        if fmt == "sarif":
            [artifact] = _uris(_sarif_valid(result.out))
            assert artifact == {"uri": url}  # the URL itself, not a file under SRCROOT
    journal = tmp_path / "journal.jsonl"
    result = _run(tmp_path, "audit", url, "--policy", policy, "--no-state", "--journal", journal)
    assert result.code == 2
    _assert_no_secret("journal", journal.read_text())


def test_credentials_typed_into_a_url_are_not_echoed(tmp_path: Path) -> None:
    # Refused as malformed before any connection: nothing here reaches the network.
    url = f"https://alice:{SECRETS[3]}@example.com/m.bin?token={SECRETS[2]}"
    for args in (["scan", url], ["audit", "--no-state", url], ["policy", "explain", "--url", url]):
        for fmt in ("text", "json", "sarif"):
            if args[0] == "policy" and fmt == "sarif":
                continue
            result = _run(tmp_path, *args, "-f", fmt)
            assert result.code == 2, result.err
            _assert_no_secret(f"{args[0]} {fmt}", result.out + result.err)
            assert "https://***@example.com" in result.out + result.err
            if fmt == "json" and args[0] != "policy":
                doc = json.loads(result.out)
                assert all(f["path_bytes"] is None for f in doc["files"])  # no copy in base64
            if fmt == "sarif":
                [artifact] = _uris(_sarif_valid(result.out))
                assert artifact["uri"] == "https://***@example.com/m.bin?token=***"


def test_redaction_keeps_everything_else() -> None:
    from safehub._format.escape import escape_line, redact_secrets

    kept = ["hf://owner/name@v1.0/model.bin", "https://h/p?design=1&expires=2&se=2026",
            "see https://a.example/x and write to bob@corp", "owner/repo:main", "a@b",
            "https://h/a?token="]
    for text in kept:
        assert redact_secrets(text) == text
    assert redact_secrets("https://tok@h/x?sig=abc&api_key=K&X-Goog-Signature=s.") == (
        "https://***@h/x?sig=***&api_key=***&X-Goog-Signature=***.")
    # The escaper redacts before it escapes: a control character cannot split a secret off.
    assert escape_line("https://u:tok\x1b[2K@h/x\n") == "https://***@h/x\\n"


def test_a_password_with_an_apostrophe_is_not_echoed(tmp_path: Path) -> None:
    # RFC 3986 allows "'" in userinfo (a sub-delimiter) and clients send it as typed; the
    # URL match stopped there, so the authority had no '@' and the password was shown.
    url = f"https://alice:it's-{SECRETS[3]}@example.com/m.bin"
    for fmt in ("text", "json", "sarif"):
        result = _run(tmp_path, "scan", url, "-f", fmt)
        assert result.code == 2, result.err
        _assert_no_secret(f"scan {fmt}", result.out + result.err)


def test_credentials_in_other_spellings_are_redacted() -> None:
    from safehub._format.escape import redact_secrets

    # A parameter name as the server decodes it, and tokens handed out in the fragment
    # (OAuth's implicit flow) with or without a query.
    assert redact_secrets(f"https://h/m?%74oken={SECRETS[2]}&X%2DAmz%2DSignature="
                          f"{SECRETS[0]}&a=1") == "https://h/m?%74oken=***&X%2DAmz%2DSignature=***&a=1"
    assert redact_secrets(f"https://h/cb#access_token={SECRETS[2]}&state=1") == (
        "https://h/cb#access_token=***&state=1")
    assert redact_secrets(f"https://h/cb?a=1#id_token={SECRETS[2]}") == (
        "https://h/cb?a=1#id_token=***")
    assert redact_secrets("https://h/p#section-2") == "https://h/p#section-2"
